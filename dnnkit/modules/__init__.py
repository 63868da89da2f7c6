"""LightningModules: the classifier, and the pretrainers built on the same conventions."""

from dnnkit.modules.autoencoder import AutoencoderPretrainer
from dnnkit.modules.classifier import Classifier
from dnnkit.modules.contrastive import ContrastivePretrainer
from dnnkit.modules.greedy import GreedyPretrainer
from dnnkit.modules.pairs import PairClassifier
from dnnkit.modules.rbm import RBMPretrainer

__all__ = ["AutoencoderPretrainer", "Classifier", "ContrastivePretrainer", "GreedyPretrainer", "PairClassifier", "RBMPretrainer"]
