"""Plain PyTorch building blocks (no Lightning): init, activations, MLPs, layer selection,
autoencoders and RBMs."""

from dnnkit.nn.autoencoder import LayerDecoder, corrupt
from dnnkit.nn.activations import ACTIVATIONS, default_init, make_activation
from dnnkit.nn.init import init_module_, init_weight_, target_std
from dnnkit.nn.mlp import MLP, DenseBlock
from dnnkit.nn.rbm import BernoulliRBM
from dnnkit.nn.select import match_name, select_layers, select_parameters

__all__ = [
    "ACTIVATIONS",
    "BernoulliRBM",
    "LayerDecoder",
    "corrupt",
    "MLP",
    "DenseBlock",
    "default_init",
    "init_module_",
    "init_weight_",
    "make_activation",
    "match_name",
    "select_layers",
    "select_parameters",
    "target_std",
]
