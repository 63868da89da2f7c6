"""Gradient clipping: by value, by global norm, by per-parameter norm, and adaptive (AGC).

Pure functions first, each usable on any iterable of parameters without a Trainer; the
:class:`GradientClipping` callback calls one of them in ``on_before_optimizer_step``, which
Lightning runs after the backward pass and, under mixed precision, after unscaling, so the
threshold applies to the true gradients.

=============  ==============================================================================
mode           what is clipped
=============  ==============================================================================
value          each element to [-threshold, threshold] (the seed's ``tf.clip_by_value``)
norm           all gradients together, scaled so that their *global* L2 norm <= threshold
               (``torch.nn.utils.clip_grad_norm_``; Keras's ``clipnorm`` is per variable)
param_norm     each parameter's gradient to L2 norm <= threshold (Keras's ``clipnorm``)
agc            unit-wise adaptive clipping (Brock et al. 2021, NFNets): each output unit's
               gradient row to at most ``clip_factor * max(||W_row||, eps)``; the output layer
               is left alone by default (``exclude="output"``), as in the paper
=============  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import choose, number
from dnnkit.nn.select import compile_pattern, select_parameters

MODES = ("value", "norm", "param_norm", "agc")


def _grads(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


@torch.no_grad()
def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of all gradients together (0 when there are none)."""
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@torch.no_grad()
def clip_by_value_(parameters: Iterable[torch.Tensor], threshold: float) -> tuple[int, int]:
    """Clamp every gradient element to ``[-threshold, threshold]`` in place.

    Returns ``(elements clipped, elements in all)``.

    Example::

        >>> w = nn.Parameter(torch.zeros(3)); w.grad = torch.tensor([-3.0, 0.5, 2.0])
        >>> clip_by_value_([w], 1.0), w.grad.tolist()
        ((2, 3), [-1.0, 0.5, 1.0])
    """
    clipped, total = [], 0
    for g in _grads(parameters):
        clipped.append((g.abs() > threshold).sum())
        total += g.numel()
        g.clamp_(-threshold, threshold)
    return int(sum(clipped)) if clipped else 0, total  # one device sync, not one per tensor


@torch.no_grad()
def clip_by_global_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping. Same as ``torch.nn.utils.clip_grad_norm_``.

    Example::

        >>> w = nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> float(clip_by_global_norm_([w], 1.0)), [round(g, 4) for g in w.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    params = [p for p in ([parameters] if isinstance(parameters, torch.Tensor) else parameters) if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    return nn.utils.clip_grad_norm_(params, max_norm)


@torch.no_grad()
def clip_by_param_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> tuple[int, int]:
    """Scale each parameter's gradient to L2 norm <= ``max_norm`` (Keras's ``clipnorm``).

    Returns ``(parameters clipped, parameters with a gradient)``.

    Example::

        >>> a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
        >>> a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
        >>> clip_by_param_norm_([a, b], 1.0), a.grad.norm().item()
        ((1, 2), 1.0)
    """
    grads = _grads(parameters)
    clipped = []
    for g in grads:
        norm = torch.linalg.vector_norm(g.float())
        over = norm > max_norm
        g.mul_(torch.where(over, max_norm / (norm + 1e-12), 1.0).to(g.dtype))
        clipped.append(over)
    return int(sum(clipped)) if clipped else 0, len(grads)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit: over all but the first dim for matrices and conv kernels,
    over the whole tensor for biases and scalars (as timm's ``adaptive_clip_grad``)."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(parameters: Iterable[torch.Tensor], clip_factor: float = 0.01, eps: float = 1e-3) -> tuple[int, int]:
    """Adaptive gradient clipping, unit-wise: each unit's gradient to norm
    ``<= clip_factor * max(||unit weights||, eps)``.

    Returns ``(units clipped, units in all)``.

    Example::

        >>> w = nn.Parameter(torch.ones(2, 4)); w.grad = torch.tensor([[1.0] * 4, [0.001] * 4])
        >>> adaptive_clip_([w], clip_factor=0.01)   # row norms 2 and 0.002; the limit is 0.02
        (1, 2)
    """
    clipped, total = [], 0
    for p in ([parameters] if isinstance(parameters, torch.Tensor) else parameters):
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_(min=eps).mul_(clip_factor)
        g_norm = unitwise_norm(p.grad)
        over = g_norm > max_norm
        p.grad.mul_(torch.where(over, max_norm / g_norm.clamp(min=1e-6), torch.ones_like(g_norm)))
        clipped.append(over.sum())
        total += over.numel()
    return int(sum(clipped)) if clipped else 0, total


class GradientClipping(L.Callback):
    """Clip gradients before every optimizer step, on any LightningModule.

    Runs in ``on_before_optimizer_step``: after the backward pass (and after the gradient
    all-reduce under DDP, so every process clips the same gradients) and, under AMP, after
    unscaling. Logs ``grad/norm`` (the global norm *before* clipping), ``grad/clipped_steps``
    (the share of optimizer steps so far in which anything was clipped) and, for value
    clipping, ``grad/clipped_elements`` (the share of gradient elements clipped). The counts
    are saved in checkpoints, so a resumed run continues them.

    Args:
        mode: ``value``, ``norm``, ``param_norm`` or ``agc`` (see the module docstring).
        threshold: the limit for ``value``, ``norm`` and ``param_norm``.
        clip_factor: AGC's lambda: a unit's gradient norm may reach this share of its weight norm.
        eps: AGC's floor on weight norms, so zero-initialised units can still move.
        exclude: a layer name pattern that AGC leaves unclipped (``"output"``: the final
            layer, as in the paper); ``None`` clips all. Only used by ``agc``.
        log: log the statistics (``False`` keeps them in :attr:`stats` only).

    Example::

        >>> clip = GradientClipping(mode="value", threshold=1.0)   # the seed's clip_by_value
        >>> trainer = L.Trainer(callbacks=[clip], max_epochs=1, logger=False)  # doctest: +SKIP
        >>> clip.stats                                                       # doctest: +SKIP
        {'steps': 275, 'clipped_steps': 12, 'elements': ..., 'clipped_elements': ...}
    """

    def __init__(
        self,
        mode: str = "value",
        threshold: float = 1.0,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        exclude: str | None = "output",
        log: bool = True,
    ) -> None:
        self.mode = choose("gradient clipping mode", mode, MODES)
        for what, value in (("threshold", threshold), ("clip_factor", clip_factor), ("eps", eps)):
            number(f"GradientClipping {what}", value, 0, low_open=True)
        self.threshold = float(threshold)
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)
        if mode == "agc" and exclude:
            compile_pattern(exclude)  # a bad pattern fails here, not at fit start
        self.exclude = exclude
        self.log = log
        self.stats = {"steps": 0, "clipped_steps": 0, "elements": 0, "clipped_elements": 0}
        self._excluded: set[int] = set()

    def parameters(self, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
        """The parameters this callback clips now: those of the optimizer about to step that have
        a gradient (so layers unfrozen into a new param group are included), less AGC's excluded
        layers. Not every gradient in the module: one the step does not use must not count in
        the global norm (as with Lightning's ``gradient_clip_val``)."""
        return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None and id(p) not in self._excluded]

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._excluded = set()
        if self.mode == "agc" and self.exclude:
            # the default "output" may match nothing on a non-dnnkit module; a pattern the user
            # chose must match something, or it fails here, naming the layers that exist
            chosen = select_parameters(pl_module, self.exclude, required=self.exclude != "output")
            self._excluded = {id(p) for p in chosen.values()}

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        params = self.parameters(optimizer)
        norm = grad_norm(params)
        if self.mode == "value":
            clipped, total = clip_by_value_(params, self.threshold)
            self.stats["elements"] += total
            self.stats["clipped_elements"] += clipped
        elif self.mode == "norm":
            clip_by_global_norm_(params, self.threshold)
            clipped = int(norm > self.threshold)
        elif self.mode == "param_norm":
            clipped, _ = clip_by_param_norm_(params, self.threshold)
        else:
            clipped, _ = adaptive_clip_(params, self.clip_factor, self.eps)
        self.stats["steps"] += 1
        self.stats["clipped_steps"] += int(clipped > 0)
        if self.log:
            metrics = {"grad/norm": norm, "grad/clipped_steps": self.stats["clipped_steps"] / self.stats["steps"]}
            if self.mode == "value":
                metrics["grad/clipped_elements"] = self.stats["clipped_elements"] / max(self.stats["elements"], 1)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict:
        return {"stats": dict(self.stats)}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.stats.update(state_dict.get("stats", {}))
