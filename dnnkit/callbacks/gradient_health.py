"""Diagnose vanishing and exploding gradients and dying or saturated units, per named layer.

Every ``every_n_steps`` optimizer steps :class:`GradientHealth` records for each watched layer
the gradient norm, the update-to-weight ratio ``||W_after - W_before|| / ||W_before||`` of that
step, and the statistics of the layer's activation (mean, std, the share of saturated units
for sigmoid/tanh, the share of dead units for the ReLU family), read by forward hooks that
exist only during sampled steps. At the end of fit it prints a one-screen summary with a
diagnosis in plain words (:func:`diagnose`), and saves ``gradient_health.png`` (per-layer
gradient norms and update ratios over training) and ``gradient_health.json`` in the run folder.

Which layers: a ``layers`` regex if given; else dnnkit's named layers ``hidden1..N`` and
``output``; else every Linear and Conv layer. A layer's activation is the first activation
module at or after the layer (in module order) and before the next watched layer; without one
the layer's own output is described (mean and std only).
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from dnnkit.errors import DnnkitError, number
from dnnkit.nn.select import layer_names, select_layers

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)
ZERO_GRADIENT = (nn.ReLU, nn.ReLU6)  # a unit that is never positive gets no gradient at all: it is dead
SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign)
MLP_LAYERS = r"hidden\d+|output"

REMEDIES = {
    "vanishing": (
        "He or Xavier/Glorot initialisation (model.init=he or xavier), a nonsaturating activation "
        "such as ELU, SELU or leaky ReLU (model.activation=elu), batch normalisation "
        "(model.batch_norm=true)"
    ),
    "exploding": (
        "gradient clipping ('callbacks=[default,gradient_clipping]'), a smaller learning rate, "
        "He or Xavier/Glorot initialisation, batch normalisation"
    ),
    "dying": "leaky ReLU, ELU or SELU instead of ReLU, He initialisation, a smaller learning rate",
    "saturated": "a nonsaturating activation (ELU, leaky ReLU), He or Xavier/Glorot initialisation, batch normalisation",
}


# ----------------------------------------------------------------------------- pure helpers


def find_layers(module: nn.Module, layers: str | None = None) -> dict[str, nn.Module]:
    """The layers to watch, bottom first: ``layers`` (a regex), else ``hidden1..N``/``output``,
    else every Linear/Conv leaf.

    Example::

        >>> from dnnkit.nn import MLP
        >>> list(find_layers(MLP(hidden=[8, 8])))
        ['hidden1', 'hidden2', 'output']
        >>> list(find_layers(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))))
        ['0', '2']
    """
    if layers:
        return select_layers(module, layers)
    named = select_layers(module, MLP_LAYERS, required=False)
    if any(name.split(".")[-1].startswith("hidden") for name in named):
        return named
    leaves = {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if not leaves:
        raise DnnkitError(
            f"GradientHealth found no layer to watch in {type(module).__name__}: it looks for hidden1..N/output "
            f"or Linear/Conv layers; pass layers=REGEX. Layers are: {', '.join(layer_names(module)) or '(none)'}"
        )
    return leaves


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


@torch.no_grad()
def activation_stats(output: torch.Tensor, activation: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Mean and std of a layer's output; for sigmoid/tanh the share of saturated values (where
    the derivative is below ~4% of its peak), for the ReLU family the share of dead units
    (never positive on this batch; units are dim 1): ``dead`` for ReLU/ReLU6, whose such units
    get no gradient, ``inactive`` for leaky ReLU, ELU, SELU, GELU, ... whose still do.

    Example::

        >>> s = activation_stats(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), nn.ReLU())
        >>> float(s["dead"])
        0.5
    """
    y = output.detach().float()
    stats = {"mean": y.mean(), "std": y.std() if y.numel() > 1 else torch.zeros(())}
    if isinstance(activation, nn.Sigmoid):
        stats["saturated"] = ((y < 0.01) | (y > 0.99)).float().mean()
    elif isinstance(activation, nn.Tanh):
        stats["saturated"] = (y.abs() > 0.98).float().mean()
    elif isinstance(activation, nn.Softsign):
        stats["saturated"] = (y.abs() > 0.8).float().mean()
    elif isinstance(activation, nn.Hardsigmoid):
        stats["saturated"] = ((y <= 0) | (y >= 1)).float().mean()
    elif isinstance(activation, nn.Hardtanh):
        stats["saturated"] = ((y <= activation.min_val) | (y >= activation.max_val)).float().mean()
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
    """L2 norm of each layer's gradients (all its parameters together)."""
    return dict(zip(layers, group_norms([[p.grad for p in m.parameters() if p.grad is not None] for m in layers.values()])))


@dataclass
class Finding:
    """One diagnosis: ``problem`` (vanishing, exploding, dying, saturated), the layers, in words."""

    problem: str
    layers: list[str]
    message: str


def _median(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _names(layers: list[str]) -> str:
    return ", ".join(layers) if len(layers) <= 12 else f"{', '.join(layers[:5])}, ... {', '.join(layers[-3:])} ({len(layers)} layers)"


def diagnose(
    history: list[dict],
    vanishing_ratio: float = 1e-2,
    sustained: float = 0.75,
    explode_growth: float = 100.0,
    dead_share: float = 0.5,
    saturated_share: float = 0.5,
    min_samples: int = 3,
) -> list[Finding]:
    """Read a :class:`GradientHealth` history (``[{"step", "grad": {layer: norm}, "update": ...,
    "act": {layer: {"mean", "std", "saturated"|"dead"}}}, ...]``) and name the problems.

    * vanishing: a layer below the top one whose gradient norm is under ``vanishing_ratio``
      times the top layer's in at least ``sustained`` of the samples;
    * exploding: a non-finite gradient norm, or a layer whose median norm over the last quarter
      of the samples is ``explode_growth`` times its median over the first quarter and larger
      than any layer's was then (so a vanishing layer that recovers is not "exploding");
    * dying: a ReLU layer (ReLU, ReLU6) whose share of dead units over the last third of the
      samples has a median of at least ``dead_share``;
    * saturated: a sigmoid/tanh layer with a median share of saturated values of at least
      ``saturated_share`` over the last third.
    """
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
            f"Exploding gradients: the gradients of {_names(nonfinite)} became infinite or NaN (first at step {first}). "
            f"Remedies: {REMEDIES['exploding']}.")))
    if len(history) < min_samples:
        return findings

    vanishing, worst = [], {}
    for name in layers[:-1]:
        ratios = [h["grad"][name] / h["grad"][top] for h in history if h["grad"].get(top, 0) > 0 and math.isfinite(h["grad"][top])]
        if ratios and sum(r < vanishing_ratio for r in ratios) >= sustained * len(ratios):
            vanishing.append(name)
            worst[name] = _median(ratios)
    if vanishing:
        low = min(worst, key=worst.get)
        findings.append(Finding("vanishing", vanishing, (
            f"Vanishing gradients: the gradients of {_names(vanishing)} stayed more than {1 / vanishing_ratio:.0f} times "
            f"smaller than those of the top layer ({top}) in {sustained:.0%} or more of the sampled steps "
            f"(median ratio for {low}: {worst[low]:.1e}), so these lower layers barely learn. "
            f"Remedies: {REMEDIES['vanishing']}.")))

    quarter = max(1, len(history) // 4)
    start = {n: _median([h["grad"][n] for h in history[:quarter]]) for n in layers if n not in nonfinite}
    end = {n: _median([h["grad"][n] for h in history[-quarter:]]) for n in start}
    largest_start = max([v for v in start.values() if math.isfinite(v)], default=math.nan)
    # growth alone could be a vanishing layer recovering: it must also outgrow every layer's start
    growing = {n: end[n] / start[n] for n in start if start[n] > 0 and end[n] / start[n] > explode_growth and end[n] > largest_start}
    if growing:
        findings.append(Finding("exploding", list(growing), (
            f"Exploding gradients: the gradient norms of {_names(list(growing))} grew "
            f"{max(growing.values()):.0f}-fold during training. Remedies: {REMEDIES['exploding']}.")))

    tail = history[-max(1, len(history) // 3) :]
    for problem, key, limit in (("dying", "dead", dead_share), ("saturated", "saturated", saturated_share)):
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
                f"{'Dying units' if problem == 'dying' else 'Saturated units'}: in {_names(list(shares))} a median "
                f"{max(shares.values()):.0%} of the units are {what} late in training. Remedies: {REMEDIES[problem]}.")))
    return findings


# ----------------------------------------------------------------------------- callback


class GradientHealth(L.Callback):
    """Watch per-layer gradients and activations during training and diagnose them at the end.

    Works on any LightningModule (see the module docstring for which layers it watches). It
    logs, at the end of each epoch, the means over that epoch's samples of ``grad/<layer>`` (gradient norm),
    ``grad/<layer>_over_top`` (that norm over the top layer's), ``update/<layer>`` (update to
    weight ratio) and ``act/<layer>_saturated`` / ``act/<layer>_dead``, so a recipe's table can
    show them (``report.metrics``). Its history is saved in checkpoints: a resumed run keeps
    the whole picture. Under DDP, gradients are the same on every process after the all-reduce;
    activations are those of process 0, which prints and saves the report.

    Args:
        every_n_steps: sample every this many optimizer steps (and the first).
        layers: a regex selecting the layers to watch (``"hidden[1-5]|output"``); ``None``:
            ``hidden1..N``/``output``, else all Linear/Conv layers.
        vanishing_ratio, sustained, explode_growth, dead_share, saturated_share: the
            thresholds of :func:`diagnose`.
        log_metrics: log the per-layer metrics (the history is kept either way).
        plot: save ``gradient_health.png`` at the end of fit.
        verbose: print the summary at the end of fit.

    Example::

        >>> health = GradientHealth(every_n_steps=25)
        >>> trainer = L.Trainer(callbacks=[health], max_epochs=3)     # doctest: +SKIP
        >>> trainer.fit(model, datamodule)                            # doctest: +SKIP
        >>> [f.problem for f in health.findings]                      # doctest: +SKIP
        ['vanishing']
    """

    def __init__(
        self,
        every_n_steps: int = 25,
        layers: str | None = None,
        vanishing_ratio: float = 1e-2,
        sustained: float = 0.75,
        explode_growth: float = 100.0,
        dead_share: float = 0.5,
        saturated_share: float = 0.5,
        log_metrics: bool = True,
        plot: bool = True,
        verbose: bool = True,
    ) -> None:
        number("GradientHealth every_n_steps", every_n_steps, 1, integer=True)
        for what, value, upper in (
            ("vanishing_ratio", vanishing_ratio, 1.0), ("sustained", sustained, 1.0), ("dead_share", dead_share, 1.0),
            ("saturated_share", saturated_share, 1.0), ("explode_growth", explode_growth, math.inf),
        ):
            number(f"GradientHealth {what}", value, 0, upper, low_open=True)
        if layers is not None:
            from dnnkit.nn.select import compile_pattern

            compile_pattern(layers)
        self.every_n_steps = every_n_steps
        self.layers = layers
        self.thresholds = dict(vanishing_ratio=vanishing_ratio, sustained=sustained, explode_growth=explode_growth,
                               dead_share=dead_share, saturated_share=saturated_share)
        self.log_metrics, self.plot, self.verbose = log_metrics, plot, verbose
        self.history: list[dict] = []
        self.findings: list[Finding] = []
        self._watched: dict[str, nn.Module] = {}
        self._names: dict[str, str] = {}
        self._activations: dict[str, nn.Module] = {}
        self._hooks: list = []
        self._act: dict[str, dict[str, torch.Tensor]] = {}
        self._grad: dict[str, float] | None = None
        self._no_grad: list[str] = []
        self._before: dict[str, list[torch.Tensor]] = {}
        self._epoch: dict[str, list[float]] = {}
        self._sample = False

    # -- setup
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._watched = find_layers(pl_module, self.layers)
        self._names = short_names(list(self._watched))
        self._activations = find_activations(pl_module, self._watched)

    # -- activations: hooks only during sampled steps
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._sample = trainer.global_step % self.every_n_steps == 0  # global_step is not free: read it once
        if not self._sample or self._hooks:
            return
        for name, layer in self._watched.items():
            act = self._activations.get(name)
            target = act if act is not None else layer
            self._hooks.append(target.register_forward_hook(self._hook(name, act)))

    def _hook(self, name: str, act: nn.Module | None):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self._act[name] = activation_stats(output, act)
        return hook

    # -- gradients and the weights before the step
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._sample:
            return
        self._grad = layer_grad_norms(self._watched)
        # frozen (or unused) layers have no gradient: their NaN norm means "none", not "exploded"
        self._no_grad = [n for n, m in self._watched.items() if all(p.grad is None for p in m.parameters())]
        self._before = {n: [p.detach().clone() for p in m.parameters() if p.requires_grad] for n, m in self._watched.items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._grad is None:  # not sampled, or gradient accumulation has not stepped yet
            return
        before, after = [], []
        for name, layer in self._watched.items():
            b = self._before.get(name, [])
            a = [p.detach() for p in layer.parameters() if p.requires_grad]
            before.append(b if len(a) == len(b) else [])
            after.append(a if len(a) == len(b) else [])
        deltas = [list(torch._foreach_sub(a, b)) if a else [] for a, b in zip(after, before)]
        update = {n: d / max(w, 1e-12) for n, d, w in zip(self._watched, group_norms(deltas), group_norms(before))}
        act = {n: {k: float(v) for k, v in s.items()} for n, s in self._act.items()}
        record = {
            "step": trainer.global_step,
            "grad": {self._names[n]: v for n, v in self._grad.items()},
            "update": {self._names[n]: v for n, v in update.items()},
            "act": {self._names[n]: v for n, v in act.items()},
            "no_grad": [self._names[n] for n in self._no_grad],
        }
        self.history.append(record)
        self._grad, self._before, self._act = None, {}, {}
        if self.log_metrics:
            for key, value in self.metrics(record).items():
                self._epoch.setdefault(key, []).append(value)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # one log call per epoch: Lightning's log costs ~1 ms per key, too much at every sample
        if self.log_metrics and self._epoch:
            pl_module.log_dict({k: statistics.fmean(v) for k, v in self._epoch.items()}, on_step=False, on_epoch=True)
        self._epoch = {}

    @staticmethod
    def metrics(record: dict) -> dict[str, float]:
        """The logged keys of one sample: ``grad/hidden1``, ``grad/hidden1_over_top``, ..."""
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

    # -- the report
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.findings = diagnose(self.history, **self.thresholds)
        self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: L.Trainer) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir) if trainer.logger else Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gradient_health.json").write_text(json.dumps(
            {"every_n_steps": self.every_n_steps, "findings": [asdict(f) for f in self.findings], "history": self.history}, indent=1))
        if self.plot and self.history:
            save_plot(self.history, folder / "gradient_health.png", self.findings)
        if self.verbose:
            print(summary(self.history, self.findings, self.every_n_steps))

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


def summary(history: list[dict], findings: list[Finding], every_n_steps: int | None = None) -> str:
    """The one-screen text report: the last third of the samples per layer, then the diagnosis."""
    if not history:
        return "Gradient health: no step was sampled."
    tail = history[-max(1, len(history) // 3) :]
    layers = list(history[-1]["grad"])
    top = layers[-1]
    every = f" every {every_n_steps} steps" if every_n_steps else ""
    lines = [f"Gradient health: {len(history)} samples{every}, up to step {history[-1]['step']}; medians of the last {len(tail)}",
             f"{'layer':<12} {'grad norm':>10} {'/ top':>9} {'update/w':>9} {'act mean':>9} {'act std':>8} {'saturated':>9} {'dead':>6}"]
    width = max(12, *(len(n) for n in layers))
    lines[1] = lines[1].replace(f"{'layer':<12}", f"{'layer':<{width}}")
    for name in layers:
        grad = _median([h["grad"][name] for h in tail])
        ratio = _median([h["grad"][name] / h["grad"][top] for h in tail if h["grad"][top]])
        update = _median([h["update"].get(name, math.nan) for h in tail])
        act = lambda key: _median([h["act"][name][key] for h in tail if key in h["act"].get(name, {})])  # noqa: E731
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


def save_plot(history: list[dict], path: Path, findings: list[Finding] | None = None) -> Path:
    """Per-layer gradient norms (left) and update-to-weight ratios (right) over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(history[0]["grad"])
    steps = [h["step"] for h in history]
    colors = plt.cm.viridis([i / max(1, len(layers) - 1) for i in range(len(layers))])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "grad", "gradient norm per layer"), (axes[1], "update", "update / weight per step")):
        for name, color in zip(layers, colors):
            values = [h[key].get(name, math.nan) for h in history]
            ax.plot(steps, [v if v and math.isfinite(v) and v > 0 else math.nan for v in values], color=color, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if findings:
        fig.suptitle("; ".join(f"{f.problem}: {_names(f.layers)}" for f in findings), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
