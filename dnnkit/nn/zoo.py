"""Model zoo: a torchvision classification backbone by name, made to fit dnnkit's data.

``ZooNet("resnet18", n_outputs=10, weights="ResNet18_Weights.IMAGENET1K_V1")`` builds the
torchvision model, loads the weights (a torchvision weights name, downloaded by torchvision when
online, or a local file read with ``weights_only=True``), replaces the classifier head (the last
``nn.Linear``) by one with ``n_outputs`` logits, and puts an input adapter in front so 28x28
grayscale batches work: the channel is repeated to three, optionally resized, and normalised
with ImageNet's statistics when pretrained weights are used.

The backbone keeps torchvision's own layer names under ``backbone.``, so freezing and reuse
select them as usual: ``LayerFreezing(frozen="backbone.(conv1|bn1|layer[12])")`` on a ResNet
(anchored at ``backbone.``: a bare ``bn1`` would also match ``layer3.0.bn1``, as patterns match
any dotted suffix of a name), ``frozen="features"`` on a MobileNet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.nn.surgery import read_state_dict, replace_layer

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


class InputAdapter(nn.Module):
    """``(B, C, H, W)`` (or ``(B, H, W)``) with C in {1, 3} -> ``(B, 3, size, size)``, normalised."""

    def __init__(self, size: int | None = None, normalize: bool = False) -> None:
        super().__init__()
        self.size, self.normalize = size, normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x


def _weights_enum(name: str, weights: str):
    """torchvision's weights object for ``weights`` (``DEFAULT``, ``IMAGENET1K_V1`` or the
    full ``ResNet18_Weights.IMAGENET1K_V1``)."""
    enum = torchvision.models.get_model_weights(name)
    short = weights.split(".")[-1]
    if "." in weights and weights.split(".")[0] != enum.__name__:
        raise DnnkitError(f"weights {weights!r} are not {name}'s; valid: {', '.join(f'{enum.__name__}.{w.name}' for w in enum)}, DEFAULT")
    if short == "DEFAULT":
        return enum.DEFAULT
    valid = [w.name for w in enum]
    return enum[choose(f"{name} weights", short, valid)]


def _load_file(backbone: nn.Module, path: Path, head: str) -> None:
    """Load a torchvision-layout state_dict (or a ZooNet / Lightning checkpoint holding one)."""
    state = read_state_dict(path)
    prefix = next((k[: k.index("backbone.") + 9] for k in state if "backbone." in k), "")
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise DnnkitError(
            f"{str(path)!r} does not fit this backbone: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            if key.startswith(head + "."):
                continue  # a head for other classes: it is replaced anyway
            raise DnnkitError(f"shape mismatch in {key!r}: {tuple(own[key].shape)} in the model but {tuple(tensor.shape)} in {str(path)!r}")
        own[key].copy_(tensor)


AUX_LOGITS = ("googlenet", "inception_v3")  # models built with training-time auxiliary classifiers

class ZooNet(nn.Module):
    """A torchvision backbone with a new ``n_outputs`` head behind an :class:`InputAdapter`.

    Args:
        name: a torchvision classification model (``resnet18``, ``mobilenet_v3_small``, ...).
        n_outputs: logits of the new head.
        weights: ``None`` (random init), a torchvision weights name (``DEFAULT``,
            ``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``), or a path to a state_dict
            file in torchvision's layout (read with ``weights_only=True``).
        input_size: resize inputs to this many pixels a side first (``None``: as they come;
            ResNets and MobileNets work on 28x28, ViTs need 224).
        normalize: standardise with ImageNet's mean/std (default: when ``weights`` is given).

    Example::

        >>> net = ZooNet("resnet18", n_outputs=10)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.head
        'fc'
    """

    def __init__(
        self,
        name: str = "resnet18",
        n_outputs: int = 10,
        weights: str | None = None,
        input_size: int | None = None,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        choose("torchvision model", name, classification_models())
        number("n_outputs", n_outputs, 1, integer=True)
        self.name, self.n_outputs = name, n_outputs
        is_file = weights is not None and (Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).is_file())
        enum = _weights_enum(name, weights) if weights is not None and not is_file else None
        try:
            # no auxiliary heads: their forward would return a namedtuple in training, not logits
            extra = {"aux_logits": False} if name in AUX_LOGITS else {}
            backbone = torchvision.models.get_model(name, weights=enum, **extra)
        except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
            raise DnnkitError(
                f"cannot download torchvision weights {weights!r} for {name} ({err}); offline? "
                "Pass a local state_dict file as weights instead"
            ) from None
        linears = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise DnnkitError(f"{name} has no nn.Linear head to replace; models with one: resnet*, mobilenet_*, efficientnet_*, vgg*, ...")
        self.head = linears[-1]
        if is_file:
            _load_file(backbone, Path(weights), self.head)
        old = backbone.get_submodule(self.head)
        replace_layer(backbone, self.head, nn.Linear(old.in_features, n_outputs))
        self.adapter = InputAdapter(input_size, weights is not None if normalize is None else normalize)
        self.backbone = backbone

    @staticmethod
    def standalone_config(config: dict) -> dict:
        """``config`` for rebuilding a trained ZooNet whose weights come from a state_dict: no
        weights to download or read (``weights=None``), the input normalisation they implied kept.

        Example::

            >>> ZooNet.standalone_config({"name": "resnet18", "weights": "/data/resnet18.pth"})
            {'name': 'resnet18', 'weights': None, 'normalize': True}
        """
        normalize = config.get("normalize")
        if normalize is None:
            normalize = config.get("weights") is not None
        return {**config, "weights": None, "normalize": bool(normalize)}

    def export_config(self, config: dict) -> dict:
        """The config :func:`dnnkit.nn.export.save_inference_model` stores (see :meth:`standalone_config`)."""
        return self.standalone_config(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))
