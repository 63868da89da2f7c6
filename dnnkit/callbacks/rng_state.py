"""``RNGState``: put the random number generators' states in every checkpoint, so that a run
resumed from a mid-epoch checkpoint draws the same dropout masks (and any other random
numbers) as a run that was never interrupted.

Lightning saves the model, optimizers, schedulers, loop counters, callbacks' ``state_dict`` and
a stateful dataloader's position, but not the RNG states. This callback is the missing piece:
its ``state_dict`` is the states of Python's ``random``, NumPy's global generator, torch's CPU
generator and (when present) every CUDA device's generator, taken when the checkpoint is
written; they are put back when Lightning restores the checkpoint, before the training data
iterator is created and before the first batch.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from typing_extensions import override


def collect_rng_states() -> dict:
    """The states of every global RNG, as types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`collect_rng_states` returned.

    Example::

        >>> s = collect_rng_states(); a = torch.rand(3); set_rng_states(s)
        >>> torch.equal(a, torch.rand(3))
        True
    """
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGState(L.Callback):
    """Save the RNG states with every checkpoint; restore them when training resumes from one.

    Works with any LightningModule; it is part of ``conf/callbacks/default.yaml``.

    Example::

        >>> import copy, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> from dnnkit.callbacks import LastCheckpoint
        >>> start = Classifier(MLP(784, [8], 10, dropout=0.5))
        >>> def fit(steps, root, ckpt_path=None):  # the output layer's weights after `steps` steps
        ...     model = copy.deepcopy(start)
        ...     trainer = L.Trainer(max_steps=steps, callbacks=[RNGState(), LastCheckpoint(every_n_train_steps=2)], logger=False,
        ...                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        ...     trainer.fit(model, TensorLoader(x, y, 16), ckpt_path=ckpt_path)
        ...     return model.model.output.weight
        >>> _ = torch.manual_seed(0); uninterrupted = fit(4, tempfile.mkdtemp())
        >>> _ = torch.manual_seed(0); root = tempfile.mkdtemp(); _ = fit(2, root)    # stopped after step 2
        >>> _ = torch.manual_seed(1)   # a new process draws other numbers, until the checkpoint's states are back
        >>> torch.equal(fit(4, root, ckpt_path="last"), uninterrupted)   # same dropout masks as without the interruption
        True
    """

    @override
    def state_dict(self) -> dict:
        return collect_rng_states()

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks before it creates the training data iterator (which may
        # draw a seed, as a DataLoader does) and before anything else draws random numbers: the
        # same order as in the uninterrupted run after the checkpoint was written
        set_rng_states(state_dict)
