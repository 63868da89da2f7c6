"""The learning-rate range test (Smith 2015; Hands-On ML ch. 11) on dnnkit's modules: Lightning's
``LearningRateFinder`` / ``Tuner.lr_find``, not a re-implementation.

``python -m dnnkit.train find_lr=true`` runs it before each stage's fit: from ``min_lr`` the rate
grows exponentially over ``num_training_steps`` optimizer steps up to ``max_lr`` (or until the
loss passes ``early_stop_threshold`` x its best), then the weights, the optimizer's state, the loop
counters, the callbacks' states and the random number generators are restored to what they were
(from a temporary checkpoint that Lightning writes in ``trainer.default_root_dir``, the stage
folder, and deletes), so the fit that follows is the fit without the finder. ``find_lr=apply``
then trains with the suggestion: the module's ``lr`` is set (:attr:`dnnkit.Classifier.lr`, the
optimizer factory's rate) and the optimizer and scheduler are built again from it, so that a
scheduler taking the optimizer's rate (``scheduler=one_cycle``'s ``max_lr: null``) follows.

Lightning's suggestion is the rate where the smoothed loss falls fastest. The curve goes to
``lr_find.png`` (loss against rate, log axis, the suggestion marked) and ``lr_find.json`` in the
stage folder; the suggestion is printed and kept in checkpoints, so a resumed fit does not repeat
the test.

For one's own ``Trainer``, ``callbacks=[LRFinder(apply=True)]`` does the same for any
LightningModule with one optimizer and an ``lr`` (or ``learning_rate``) attribute.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.core.optimizer import _MockOptimizer
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from torchmetrics import Metric
from typing_extensions import override

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.io import atomic_write

log = logging.getLogger(__name__)

MODES = ("exponential", "linear")
SUGGESTIONS = ("steepest", "minimum")
RULES = {"steepest": "steepest descent", "minimum": "the loss's minimum / {divisor}"}
SKIP = (10, 1)  # points left out at the start and end of the curve, as Lightning's suggestion does
FIND_LR = {"false": False, "true": True, "apply": "apply"}  # the values of the `find_lr` key


class LRFinder(LearningRateFinder):
    """Lightning's ``LearningRateFinder`` at the start of a fit (not of a resumed one), with a plot,
    a printed suggestion, clear errors, and the module's metrics reset after the test.

    Args:
        min_lr, max_lr: the range of the test.
        num_training_steps: optimizer steps of the test; the fit must have at least as many.
        mode: ``exponential`` (a log axis) or ``linear``.
        early_stop_threshold: stop once the loss exceeds this multiple of its best (None: never).
        apply: train with the suggestion (and rebuild the optimizer and scheduler from it).
        path: the plot's path; default ``<trainer.default_root_dir>/lr_find.png``.

    Example::

        >>> import functools, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (256, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (256,))
        >>> finder = LRFinder(num_training_steps=30, apply=True)
        >>> trainer = L.Trainer(max_epochs=2, callbacks=[finder], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> net = Classifier(MLP(784, [16], 10), optimizer=functools.partial(torch.optim.SGD, lr=0.01))
        >>> trainer.fit(net, TensorLoader(x, y, 16))  # doctest: +ELLIPSIS
        LR finder: suggested learning rate ... (the loss's minimum / 10; range 1e-08 to 1, 30 steps; lr_find.png); training with it
        >>> 1e-8 <= finder.suggestion <= 1 and trainer.optimizers[0].param_groups[0]["lr"] == finder.suggestion
        True
    """

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100, mode: str = "exponential",
                 early_stop_threshold: float | None = 4.0, apply: bool = False, path: str | None = None,
                 suggest: str = "minimum", divisor: float = 10.0) -> None:
        number("lr_finder.min_lr", min_lr, 0, low_open=True)
        number("lr_finder.max_lr", max_lr, min_lr, low_open=True)
        number("lr_finder.num_training_steps", num_training_steps, 2, integer=True)
        number("lr_finder.early_stop_threshold", early_stop_threshold, 1, low_open=True, optional=True)
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps,
                         mode=choose("lr_finder.mode", mode, MODES), early_stop_threshold=early_stop_threshold,
                         update_attr=False)  # applied here, after the rule of `suggest` has chosen
        self.apply = bool(apply)
        self.suggest = choose("lr_finder.suggest", suggest, SUGGESTIONS)
        self.divisor = float(number("lr_finder.divisor", divisor, 1))
        self.path = path
        self.suggestion: float | None = None
        self.results: dict[str, list[float]] = {}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path:  # resumed: the test ran before the interruption and its outcome is in the checkpoint
            if self.suggestion is not None and trainer.is_global_zero:
                log.info("LR finder: ran before the resume; suggested learning rate %.3g", self.suggestion)
            return
        check_fit(trainer, pl_module, self._num_training_steps, self.apply)
        self.lr_find(trainer, pl_module)
        reset_metrics(pl_module)
        finder = self.optimal_lr
        if finder is None:  # fast_dev_run: Lightning skips the test
            return
        self.results = {"lr": [float(v) for v in finder.results["lr"]], "loss": [float(v) for v in finder.results["loss"]]}
        self.suggestion = suggested_rate(finder, self.suggest, self.divisor)
        if self.apply and self.suggestion is not None:
            lightning_setattr(pl_module, "lr" if lightning_hasattr(pl_module, "lr") else "learning_rate", self.suggestion)
            trainer.strategy.setup_optimizers(trainer)  # the scheduler too is built from the new rate
        if trainer.is_global_zero:
            self.report(trainer, finder)

    def report(self, trainer: L.Trainer, finder) -> None:
        from dnnkit.plots import save_lr_find

        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "lr_find.png"
        save_lr_find(finder, path, self.suggestion, self.suggest)
        atomic_write(path.with_suffix(".json"), json.dumps({"suggestion": self.suggestion, **self.results}))
        if self.suggestion is None:
            log.warning("LR finder: no suggestion (too few finite losses over %d steps); %s, see %s", len(self.results["lr"]),
                        "training with the configured rate" if self.apply else "nothing changed", path)
            return
        if self.suggest == "minimum" and self.suggestion * self.divisor >= self.results["lr"][-1 - SKIP[1]]:
            log.warning("LR finder: the loss was still falling at the test's last rates; its minimum may lie beyond "
                        "(raise callbacks.lr_finder.max_lr or num_training_steps)")
        what = "training with it" if self.apply else "not applied (find_lr=apply trains with it)"
        log.info("LR finder: suggested learning rate %.3g (%s; range %.3g to %.3g, %d steps; %s); %s", self.suggestion,
                 RULES[self.suggest].format(divisor=f"{self.divisor:g}"), self._min_lr, self._max_lr, len(self.results["lr"]),
                 path.name, what)

    @override
    def state_dict(self) -> dict:
        return {"suggestion": self.suggestion, "results": self.results}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.suggestion = state_dict.get("suggestion")
        self.results = dict(state_dict.get("results") or {})


def suggested_rate(finder, rule: str = "steepest", divisor: float = 10.0) -> float | None:
    """The rate ``rule`` reads off the range test's curve (None: too few finite points):

    - ``steepest``: Lightning's ``suggestion()``, where the smoothed loss falls fastest per unit
      of rate (a linear axis: on a log sweep it leans to the smallest rates, where a tiny step in
      rate makes any slope steep);
    - ``minimum``: the rate at the smoothed loss's minimum divided by ``divisor`` (fastai's
      ``minimum`` suggestion; the book's "about 10 times lower than the turning point").

    Both skip the first 10 points and the last, as Lightning does.

    Example::

        >>> from lightning.pytorch.tuner.lr_finder import _LRFinder
        >>> finder = _LRFinder("exponential", 1e-4, 1, 40)
        >>> lrs = [1e-4 * 10 ** (k / 10) for k in range(41)]
        >>> finder.results = {"lr": lrs, "loss": [2.0 - 1.5 * k / 30 if k <= 30 else 0.5 + (k - 30) for k in range(41)]}
        >>> round(suggested_rate(finder, "minimum"), 6), round(suggested_rate(finder, "minimum", divisor=1), 6)
        (0.01, 0.1)
    """
    if rule == "steepest":
        return finder.suggestion(*SKIP)
    points = [(loss, lr) for lr, loss in list(zip(finder.results["lr"], finder.results["loss"]))[SKIP[0]:-SKIP[1]]
              if math.isfinite(loss)]
    if len(points) < 2:
        return None
    return min(points)[1] / divisor


def check_fit(trainer: L.Trainer, pl_module: L.LightningModule, steps: int, apply: bool) -> None:
    """What the range test needs: automatic optimization, one optimizer, ``steps`` steps in the
    fit, and an ``lr`` (or ``learning_rate``) attribute to apply the suggestion to."""
    name = type(pl_module).__name__
    if not pl_module.automatic_optimization:
        raise DnnkitError(f"find_lr: {name} steps its optimizers itself (manual optimization); the range test needs a "
                          "module that Lightning optimizes, such as dnnkit.Classifier")
    optimizers = [o for o in trainer.optimizers if not isinstance(o, _MockOptimizer)]
    if len(optimizers) != 1:
        raise DnnkitError(f"find_lr: {name} configures {len(optimizers)} optimizers; the range test needs exactly one "
                          "(configure_optimizers must return an optimizer)")
    available = trainer.estimated_stepping_batches
    if available < steps:
        raise DnnkitError(
            f"find_lr: the range test takes lr_finder.num_training_steps={steps} optimizer steps but this fit has only "
            f"{int(available)} (trainer.max_steps, or trainer.max_epochs x batches); lower num_training_steps or train longer"
        )
    if apply and not (lightning_hasattr(pl_module, "lr") or lightning_hasattr(pl_module, "learning_rate")):
        raise DnnkitError(f"find_lr=apply: {name} has no `lr` (or `learning_rate`) attribute to set; give it one "
                          "(dnnkit.Classifier's sets its optimizer factory's rate) or use find_lr=true")


def reset_metrics(pl_module: torch.nn.Module) -> None:
    """The test's steps out of the module's torchmetrics (not saved in checkpoints, so not restored)."""
    for module in pl_module.modules():
        if isinstance(module, Metric):
            module.reset()
    unlogged = getattr(pl_module, "_unlogged_losses", None)
    if isinstance(unlogged, list):
        unlogged.clear()


def find_lr_mode(value) -> bool | str:
    """``find_lr``'s value: False, True or "apply".

    Example::

        >>> find_lr_mode(True), find_lr_mode("apply"), find_lr_mode(None)
        (True, 'apply', False)
    """
    if value is None:
        return False
    key = str(value).lower() if isinstance(value, (bool, str)) else repr(value)
    if key not in FIND_LR:
        raise DnnkitError(f"find_lr must be one of false, true, apply, got {value!r}")
    return FIND_LR[key]


def with_lr_finder(callbacks: list[L.Callback], find_lr) -> list[L.Callback]:
    """``callbacks`` with an :class:`LRFinder` first when ``find_lr`` asks for one: the stage's own
    (``callbacks.lr_finder``, conf/callbacks/lr_finder.yaml) told whether to apply, else a new one."""
    mode = find_lr_mode(find_lr)
    if not mode:
        return callbacks
    finder = next((c for c in callbacks if isinstance(c, LRFinder)), None)
    if finder is None:
        finder = LRFinder()
        callbacks = [finder, *callbacks]
    finder.apply = mode == "apply"
    return callbacks


def check_stage(spec: dict, module) -> None:
    """The preflight's checks of ``find_lr`` (:mod:`dnnkit.preflight`): its value, a module that
    Lightning optimizes with one optimizer, and ``trainer.max_steps`` against the test's length."""
    mode = find_lr_mode(spec.get("find_lr"))
    finder = (spec.get("callbacks") or {}).get("lr_finder")
    if not mode and not isinstance(finder, dict):
        return
    steps = (finder or {}).get("num_training_steps", 100) if isinstance(finder, dict) else 100
    max_steps = (spec.get("trainer") or {}).get("max_steps", -1)
    if isinstance(max_steps, int) and 0 <= max_steps < steps:
        raise DnnkitError(f"find_lr: the range test takes lr_finder.num_training_steps={steps} optimizer steps but "
                          f"trainer.max_steps={max_steps}; lower callbacks.lr_finder.num_training_steps or raise trainer.max_steps")
    if module is None or not callable(getattr(module, "configure_optimizers", None)):
        return
    name = type(module).__name__
    if not getattr(module, "automatic_optimization", True):
        raise DnnkitError(f"find_lr: {name} steps its optimizers itself (manual optimization); the range test needs a "
                          "module that Lightning optimizes, such as dnnkit.Classifier")
    try:
        configured = module.configure_optimizers()
    except Exception:  # noqa: BLE001 - e.g. a factory that wants real tensors: the fit checks again
        return
    optimizers = configured.get("optimizer") if isinstance(configured, dict) else configured
    count = 0 if optimizers is None else 1 if isinstance(optimizers, torch.optim.Optimizer) else len(optimizers)
    if count != 1:
        raise DnnkitError(f"find_lr: {name} configures {count} optimizers; the range test needs exactly one")
