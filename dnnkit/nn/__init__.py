"""Plain PyTorch building blocks (no Lightning): init, activations, MLPs, layer selection,
freezing, surgery, the torchvision model zoo, autoencoders, RBMs, batch-norm folding and export."""

from dnnkit.nn.activations import ACTIVATIONS, default_init, make_activation
from dnnkit.nn.autoencoder import LayerDecoder, corrupt
from dnnkit.nn.export import load_inference_model, save_inference_model
from dnnkit.nn.fold import fold_batchnorm
from dnnkit.nn.freeze import freeze, unfreeze
from dnnkit.nn.init import init_module_, init_weight_, target_std
from dnnkit.nn.mlp import MLP, DenseBlock
from dnnkit.nn.rbm import BernoulliRBM
from dnnkit.nn.select import match_name, select_layers, select_parameters
from dnnkit.nn.surgery import load_state_dict, replace_layer, restack, reuse_layers
from dnnkit.nn.zoo import ZooNet

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "BernoulliRBM",
    "DenseBlock",
    "LayerDecoder",
    "ZooNet",
    "corrupt",
    "default_init",
    "fold_batchnorm",
    "freeze",
    "init_module_",
    "init_weight_",
    "load_inference_model",
    "load_state_dict",
    "make_activation",
    "match_name",
    "replace_layer",
    "restack",
    "reuse_layers",
    "save_inference_model",
    "select_layers",
    "select_parameters",
    "target_std",
    "unfreeze",
]
