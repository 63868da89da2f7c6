"""LightningModules: the classifier, and the pretrainers built on the same conventions."""

from dnnkit.modules.classifier import Classifier

__all__ = ["Classifier"]
