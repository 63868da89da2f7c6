"""Gradient health in plain PyTorch: per-layer statistics and a diagnosis in words.

Per watched layer: the gradient norm (:func:`layer_grad_norms`), the update-to-weight ratio
``||W_after - W_before|| / ||W_before||`` of one optimizer step (:func:`snapshot`, then
:func:`update_ratios`), and the statistics of the layer's activation (:func:`activation_stats`:
mean, std, the share of saturated units for sigmoid/tanh, of dead units for the ReLU family).
:func:`diagnose` reads a history of such samples and names the problems (vanishing, exploding,
dying, saturated) in plain words with :data:`REMEDIES`; :class:`Thresholds` holds every limit it
applies. :class:`~dnnkit.callbacks.GradientHealth` samples these during a Lightning fit; they
work just as well in a loop of your own, without a Trainer.

Which layers (:func:`find_layers`): a ``layers`` regex if given; else dnnkit's named layers
``hidden1..N`` and ``output`` (and a CNN's ``conv1..N``); else every Linear and Conv layer. A layer's activation
(:func:`find_activations`) is the first activation module at or after the layer (in module order)
and before the next watched layer; without one the layer's own output is described (mean and std).

Example::

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
    >>> layers = find_layers(net)                  # no hidden1..N here: every Linear layer
    >>> list(layers), type(find_activations(net, layers)["0"]).__name__
    (['0', '2'], 'Sigmoid')
    >>> before = snapshot(layers)
    >>> net(torch.randn(16, 4)).pow(2).mean().backward()
    >>> grads = layer_grad_norms(layers)
    >>> torch.optim.SGD(net.parameters(), lr=0.1).step()
    >>> ratios = update_ratios(layers, before)
    >>> all(0 < r < 1 for r in ratios.values())
    True
    >>> history = [{"step": s, "grad": {"0": 1e-5, "2": 1.0}, "update": {}, "act": {}} for s in range(3)]
    >>> [f.problem for f in diagnose(history)]
    ['vanishing']
    >>> diagnose(history, Thresholds(vanishing_ratio=1e-6))
    []
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import textwrap
from dataclasses import dataclass

import torch
from torch import nn

from dnnkit.errors import DnnkitError, number
from dnnkit.nn.select import layer_names, select_layers

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)
ZERO_GRADIENT = (nn.ReLU, nn.ReLU6)  # a unit that is never positive gets no gradient at all: it is dead
SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign)
MLP_LAYERS = r"hidden\d+|output"
NAMED_LAYERS = r"conv\d+|hidden\d+|output"  # a dnnkit CNN's: conv1..N, hidden1..M, output

#: What to try against each problem, worded for any LightningModule (dnnkit's config keys in
#: brackets). ``REMEDIES["exploding"]`` is also what NonFiniteGuard offers when training diverges.
REMEDIES = {
    "exploding": (
        "lower the learning rate, clip gradients (dnnkit: callbacks=[default,gradient_clipping]; "
        "Lightning: Trainer(gradient_clip_val=1.0)), add batch normalization, "
        "or use a scale-preserving init for the activation"
    ),
    "vanishing": (
        "He or Xavier/Glorot initialization (dnnkit: model.init=he or xavier), a nonsaturating activation "
        "such as ELU, SELU or leaky ReLU (dnnkit: model.activation=elu), batch normalization "
        "(dnnkit: model.batch_norm=true)"
    ),
    "dying": "leaky ReLU, ELU or SELU instead of ReLU, He initialization, a smaller learning rate",
    "saturated": "a nonsaturating activation (ELU, leaky ReLU), He or Xavier/Glorot initialization, batch normalization",
}


@dataclass(frozen=True)
class Thresholds:
    """Every limit :func:`diagnose` applies, in one place (``GradientHealth``'s arguments).

    Attributes:
        vanishing_ratio: a layer below the top one is *vanishing* when its gradient norm is under
            this share of the top layer's ...
        sustained: ... in at least this share of the samples.
        explode_growth: a layer is *exploding* when its median gradient norm over the last quarter
            of the samples is this many times its median over the first quarter (and larger than
            any layer's was then); a non-finite norm is exploding whatever the growth.
        dead_share: a ReLU/ReLU6 layer is *dying* when the median share of its units that are never
            positive on a batch, over the last third of the samples, is at least this.
        saturated_share: a sigmoid/tanh layer is *saturated* when the median share of its outputs
            in the flat ends (see :data:`SATURATION`), over the last third, is at least this.
        min_samples: fewer samples than this give no finding but non-finite gradients.

    Example::

        >>> Thresholds(vanishing_ratio=1e-3).vanishing_ratio
        0.001
    """

    vanishing_ratio: float = 1e-2
    sustained: float = 0.75
    explode_growth: float = 100.0
    dead_share: float = 0.5
    saturated_share: float = 0.5
    min_samples: int = 3

    def __post_init__(self) -> None:
        for name in ("vanishing_ratio", "sustained", "dead_share", "saturated_share", "explode_growth"):
            upper = math.inf if name == "explode_growth" else 1.0
            number(f"GradientHealth {name}", getattr(self, name), 0, upper, low_open=True)
        number("GradientHealth min_samples", self.min_samples, 1, integer=True)


#: Where an activation counts as saturated: its derivative is below ~4% of its peak there.
SATURATION = {
    nn.Sigmoid: lambda y, act: (y < 0.01) | (y > 0.99),
    nn.Tanh: lambda y, act: y.abs() > 0.98,
    nn.Softsign: lambda y, act: y.abs() > 0.8,
    nn.Hardsigmoid: lambda y, act: (y <= 0) | (y >= 1),
    nn.Hardtanh: lambda y, act: (y <= act.min_val) | (y >= act.max_val),
}


# ----------------------------------------------------------------------------- layers


def find_layers(module: nn.Module, layers: str | None = None) -> dict[str, nn.Module]:
    """The layers to watch, bottom first: ``layers`` (a regex), else ``hidden1..N``/``output``
    (with a CNN's ``conv1..N`` before them), else every Linear/Conv leaf.

    Example::

        >>> from dnnkit.nn import MLP
        >>> list(find_layers(MLP(hidden=[8, 8])))
        ['hidden1', 'hidden2', 'output']
        >>> list(find_layers(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))))
        ['0', '2']
        >>> from dnnkit.nn import CNN
        >>> list(find_layers(CNN(1, 28, [4, 8], hidden=[16])))
        ['conv1', 'conv2', 'hidden1', 'output']
    """
    if layers:
        return select_layers(module, layers)
    named = {n: m for n, m in select_layers(module, NAMED_LAYERS, required=False).items()
             if not re.fullmatch(r"conv\d+", n.split(".")[-1]) or _in_cnn(module, n)}
    if any(name.split(".")[-1].startswith(("hidden", "conv")) for name in named):
        return named
    leaves = {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if not leaves:
        raise DnnkitError(
            f"GradientHealth found no layer to watch in {type(module).__name__}: it looks for hidden1..N/output "
            f"or Linear/Conv layers; pass layers=REGEX. Layers are: {', '.join(layer_names(module)) or '(none)'}"
        )
    return leaves


def _in_cnn(module: nn.Module, name: str) -> bool:
    """Whether the layer ``name`` is a child of a dnnkit :class:`~dnnkit.nn.CNN` (a torchvision
    ResNet's ``conv1`` is not one of these named layers)."""
    from dnnkit.nn.cnn import CNN

    parent = name.rpartition(".")[0]
    return isinstance(module.get_submodule(parent) if parent else module, CNN)


def find_activations(module: nn.Module, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """For each watched layer, the first activation module at or after it and before the next."""
    order = list(module.named_modules())
    position = {name: i for i, (name, _) in enumerate(order)}
    starts = [position[name] for name in layers] + [len(order)]
    found = {}
    for k, name in enumerate(layers):
        for _, sub in order[starts[k] : starts[k + 1]]:
            if isinstance(sub, RELU_FAMILY + SATURATING):
                found[name] = sub
                break
    return found


def short_names(names: list[str]) -> dict[str, str]:
    """Drop the dotted prefix all names share: ``model.hidden1`` -> ``hidden1``."""
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return {n: ".".join(p[common:]) for n, p in zip(names, parts)}


def layer_list(layers: list[str]) -> str:
    """Layer names for a sentence; a long list keeps its first five and last three."""
    return ", ".join(layers) if len(layers) <= 12 else f"{', '.join(layers[:5])}, ... {', '.join(layers[-3:])} ({len(layers)} layers)"


# ----------------------------------------------------------------------------- statistics


@torch.no_grad()
def activation_stats(output: torch.Tensor, activation: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Mean and std of a layer's output; for sigmoid/tanh the share of saturated values
    (:data:`SATURATION`), for the ReLU family the share of dead units (never positive on this
    batch; units are dim 1): ``dead`` for ReLU/ReLU6, whose such units get no gradient,
    ``inactive`` for leaky ReLU, ELU, SELU, GELU, ... whose still do.

    Example::

        >>> s = activation_stats(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), nn.ReLU())
        >>> float(s["dead"])
        0.5
    """
    y = output.detach().float()
    stats = {"mean": y.mean(), "std": y.std() if y.numel() > 1 else torch.zeros(())}
    saturated = next((rule for kind, rule in SATURATION.items() if isinstance(activation, kind)), None)
    if saturated is not None:
        stats["saturated"] = saturated(y, activation).float().mean()
    elif isinstance(activation, RELU_FAMILY):
        per_unit = y.amax(dim=[d for d in range(y.ndim) if d != 1]) if y.ndim >= 2 else y.amax()
        # "dead" where that means no gradient at all (ReLU); "inactive" for leaky/ELU-like ones
        stats["dead" if isinstance(activation, ZERO_GRADIENT) else "inactive"] = (per_unit <= 0).float().mean()
    return stats


@torch.no_grad()
def group_norms(groups: list[list[torch.Tensor]]) -> list[float]:
    """The L2 norm of each group of tensors taken together (NaN for an empty group), computed
    with one fused kernel and one device sync."""
    flat = [t for group in groups for t in group]
    norms = list(torch._foreach_norm(flat)) if flat else []
    out, i = [], 0
    for group in groups:
        part = norms[i : i + len(group)]
        out.append(torch.linalg.vector_norm(torch.stack(part).float()).cpu() if part else torch.tensor(math.nan))
        i += len(group)
    return torch.stack(out).tolist() if out else []


def layer_grad_norms(layers: dict[str, nn.Module]) -> dict[str, float]:
    """L2 norm of each layer's gradients (all its parameters together; NaN without any)."""
    return dict(zip(layers, group_norms([[p.grad for p in m.parameters() if p.grad is not None] for m in layers.values()])))


def no_grad_layers(layers: dict[str, nn.Module]) -> list[str]:
    """The layers without any gradient (frozen or unused): their NaN norm means "none", not "exploded"."""
    return [n for n, m in layers.items() if all(p.grad is None for p in m.parameters())]


@torch.no_grad()
def snapshot(layers: dict[str, nn.Module]) -> dict[str, list[torch.Tensor]]:
    """Copies of each layer's trainable parameters, taken before a step for :func:`update_ratios`."""
    return {n: [p.detach().clone() for p in m.parameters() if p.requires_grad] for n, m in layers.items()}


@torch.no_grad()
def update_ratios(layers: dict[str, nn.Module], before: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """``||W_after - W_before|| / ||W_before||`` per layer, ``before`` from :func:`snapshot` (NaN
    for a layer without trainable parameters or whose number of them changed)."""
    old, new = [], []
    for name, layer in layers.items():
        b = before.get(name, [])
        a = [p.detach() for p in layer.parameters() if p.requires_grad]
        old.append(b if len(a) == len(b) else [])
        new.append(a if len(a) == len(b) else [])
    deltas = [list(torch._foreach_sub(a, b)) if a else [] for a, b in zip(new, old)]
    return {n: d / max(w, 1e-12) for n, d, w in zip(layers, group_norms(deltas), group_norms(old))}


def record_metrics(record: dict) -> dict[str, float]:
    """The metric keys of one sample: ``grad/hidden1``, ``grad/hidden1_over_top``, ``update/hidden1``,
    ``act/hidden1_saturated`` | ``act/hidden1_dead``."""
    names = list(record["grad"])
    top = record["grad"][names[-1]] if names else math.nan
    out = {}
    for name in names:
        g = record["grad"][name]
        out[f"grad/{name}"] = g
        if name != names[-1]:
            out[f"grad/{name}_over_top"] = g / top if top and math.isfinite(top) else math.nan
        out[f"update/{name}"] = record["update"][name]
        for key in ("saturated", "dead"):
            if key in record["act"].get(name, {}):
                out[f"act/{name}_{key}"] = record["act"][name][key]
    return out


# ----------------------------------------------------------------------------- diagnosis


@dataclass
class Finding:
    """One diagnosis: ``problem`` (vanishing, exploding, dying, saturated), the layers, in words."""

    problem: str
    layers: list[str]
    message: str


def _median(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def diagnose(history: list[dict], thresholds: Thresholds | None = None, **overrides) -> list[Finding]:
    """Read a history of samples (``[{"step", "grad": {layer: norm}, "update": ..., "act": {layer:
    {"mean", "std", "saturated"|"dead"}}, "no_grad": [layer, ...]}, ...]``, layers bottom first)
    and name the problems, by the rules of :class:`Thresholds` (``thresholds``, with any field
    replaced by a keyword: ``diagnose(history, vanishing_ratio=1e-3)``).
    """
    t = dataclasses.replace(thresholds or Thresholds(), **overrides)
    findings: list[Finding] = []
    if not history:
        return findings
    layers = list(history[0]["grad"])
    top = layers[-1]

    def exploded(h: dict, n: str) -> bool:
        return not math.isfinite(h["grad"].get(n, 0.0)) and n not in h.get("no_grad", ())

    nonfinite = [n for n in layers if any(exploded(h, n) for h in history)]
    if nonfinite:
        first = next(h["step"] for h in history if any(exploded(h, n) for n in nonfinite))
        findings.append(Finding("exploding", nonfinite, (
            f"Exploding gradients: the gradients of {layer_list(nonfinite)} became infinite or NaN (first at step {first}). "
            f"Remedies: {REMEDIES['exploding']}.")))
    if len(history) < t.min_samples:
        return findings

    vanishing, worst = [], {}
    for name in layers[:-1]:
        ratios = [h["grad"][name] / h["grad"][top] for h in history if h["grad"].get(top, 0) > 0 and math.isfinite(h["grad"][top])]
        if ratios and sum(r < t.vanishing_ratio for r in ratios) >= t.sustained * len(ratios):
            vanishing.append(name)
            worst[name] = _median(ratios)
    if vanishing:
        low = min(worst, key=worst.get)
        findings.append(Finding("vanishing", vanishing, (
            f"Vanishing gradients: the gradients of {layer_list(vanishing)} stayed more than {1 / t.vanishing_ratio:.0f} times "
            f"smaller than those of the top layer ({top}) in {t.sustained:.0%} or more of the sampled steps "
            f"(median ratio for {low}: {worst[low]:.1e}), so these lower layers barely learn. "
            f"Remedies: {REMEDIES['vanishing']}.")))

    quarter = max(1, len(history) // 4)
    start = {n: _median([h["grad"][n] for h in history[:quarter]]) for n in layers if n not in nonfinite}
    end = {n: _median([h["grad"][n] for h in history[-quarter:]]) for n in start}
    largest_start = max([v for v in start.values() if math.isfinite(v)], default=math.nan)
    # growth alone could be a vanishing layer recovering: it must also outgrow every layer's start
    growing = {n: end[n] / start[n] for n in start
               if start[n] > 0 and end[n] / start[n] > t.explode_growth and end[n] > largest_start}
    if growing:
        findings.append(Finding("exploding", list(growing), (
            f"Exploding gradients: the gradient norms of {layer_list(list(growing))} grew "
            f"{max(growing.values()):.0f}-fold during training. Remedies: {REMEDIES['exploding']}.")))

    tail = history[-max(1, len(history) // 3) :]
    for problem, key, limit in (("dying", "dead", t.dead_share), ("saturated", "saturated", t.saturated_share)):
        shares = {}
        for name in layers:
            values = [h["act"][name][key] for h in tail if key in h.get("act", {}).get(name, {})]
            if values:
                share = _median(values)
                if share >= limit:
                    shares[name] = share
        if shares:
            what = "dead (never positive, so they get no gradient)" if problem == "dying" else "saturated (flat ends of the activation)"
            findings.append(Finding(problem, list(shares), (
                f"{'Dying units' if problem == 'dying' else 'Saturated units'}: in {layer_list(list(shares))} a median "
                f"{max(shares.values()):.0%} of the units are {what} late in training. Remedies: {REMEDIES[problem]}.")))
    return findings


def summary(history: list[dict], findings: list[Finding], every_n_steps: int | None = None) -> str:
    """The one-screen text report: the last third of the samples per layer, then the diagnosis."""
    if not history:
        return "Gradient health: no step was sampled."
    tail = history[-max(1, len(history) // 3) :]
    layers = list(history[-1]["grad"])
    top = layers[-1]
    every = f" every {every_n_steps} steps" if every_n_steps else ""
    width = max(12, *(len(n) for n in layers))
    columns = f"{'grad norm':>10} {'/ top':>9} {'update/w':>9} {'act mean':>9} {'act std':>8} {'saturated':>9} {'dead':>6}"
    lines = [f"Gradient health: {len(history)} samples{every}, up to step {history[-1]['step']}; medians of the last {len(tail)}",
             f"{'layer':<{width}} {columns}"]
    for name in layers:
        grad = _median([h["grad"][name] for h in tail])
        ratio = _median([h["grad"][name] / h["grad"][top] for h in tail if h["grad"][top]])
        update = _median([h["update"].get(name, math.nan) for h in tail])

        def act(key: str, name: str = name) -> float:
            return _median([h["act"][name][key] for h in tail if key in h["act"].get(name, {})])

        dead = act("dead") if any("dead" in h["act"].get(name, {}) for h in tail) else act("inactive")
        cells = [f"{grad:>10.2e}", f"{ratio:>9.1e}", f"{update:>9.1e}", f"{act('mean'):>9.3f}", f"{act('std'):>8.3f}",
                 f"{act('saturated'):>9.0%}" if not math.isnan(act("saturated")) else f"{'-':>9}",
                 f"{dead:>6.0%}" if not math.isnan(dead) else f"{'-':>6}"]
        lines.append(f"{name:<{width}} " + " ".join(cells))
    if findings:
        for f in findings:
            lines += textwrap.wrap(f.message, 100, initial_indent="! ", subsequent_indent="  ")
    else:
        lines.append("No vanishing or exploding gradients, dying or saturated units found.")
    return "\n".join(lines)
