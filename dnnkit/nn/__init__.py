"""Plain PyTorch building blocks (no Lightning): init, activations, MLPs, CNNs, layer selection,
freezing, surgery, the torchvision model zoo, autoencoders, RBMs, batch-norm folding and export."""

from dnnkit.nn.activations import ACTIVATIONS, default_init, make_activation
from dnnkit.nn.autoencoder import LayerDecoder, corrupt
from dnnkit.nn.cnn import CNN, ConvBlock
from dnnkit.nn.contrastive import ProjectionHead, nt_xent
from dnnkit.nn.export import load_inference_model, save_inference_model
from dnnkit.nn.fold import fold_batchnorm
from dnnkit.nn.freeze import freeze, unfreeze
from dnnkit.nn.init import init_module_, init_weight_, target_std
from dnnkit.nn.mlp import MLP, DenseBlock
from dnnkit.nn.rbm import BernoulliRBM
from dnnkit.nn.select import match_name, select_layers, select_parameters
from dnnkit.nn.surgery import read_state_dict, replace_layer, restack, reuse_layers
from dnnkit.nn.towers import Tower, Towers
from dnnkit.nn.zoo import ZooNet

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "BernoulliRBM",
    "ConvBlock",
    "DenseBlock",
    "LayerDecoder",
    "ProjectionHead",
    "ZooNet",
    "corrupt",
    "default_init",
    "fold_batchnorm",
    "freeze",
    "init_module_",
    "init_weight_",
    "load_inference_model",
    "make_activation",
    "match_name",
    "nt_xent",
    "read_state_dict",
    "replace_layer",
    "restack",
    "reuse_layers",
    "save_inference_model",
    "select_layers",
    "select_parameters",
    "target_std",
    "Tower",
    "Towers",
    "unfreeze",
]


def __getattr__(name: str):
    if name == "load_state_dict":  # the 0.1 name, which read like nn.Module.load_state_dict
        import warnings

        warnings.warn("dnnkit.nn.load_state_dict is now dnnkit.nn.read_state_dict", DeprecationWarning, stacklevel=2)
        return read_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
