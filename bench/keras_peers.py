"""Keras 3 peers of the speed bench: the recipe's MLP as ``keras.Sequential`` trained by ``model.fit``.

Keras fixes its backend when it is imported (``KERAS_BACKEND``), so each backend runs in a child
process of its own, started once and asked for one fit at a time, so that the bench keeps
alternating the contenders round by round:

* the parent (:class:`KerasPeer`, used by :func:`bench.baselines.fit_contender`) writes the
  stage's training and validation images (the uint8 tensors dnnkit's ``TensorLoader`` cuts its
  batches from, after the split and the class subset) and a spec of the network and optimizer
  (:func:`keras_spec`, from the stage's config) into a temporary folder, starts
  ``python -m bench.keras_peers --backend jax|torch FOLDER`` and sends one JSON line per fit;
* the child (:func:`serve`) imports only numpy and Keras (and the backend), builds a fresh
  model per fit, seeded, and answers with the per-epoch wall and CPU seconds and the final
  validation accuracy.

The same work as dnnkit: a ``Rescaling`` layer turns the uint8 images into float32 ``x * scale +
offset`` with the loader's own scale and shift (the division by 255 happens inside the compiled
step, as the loader does it per batch), ``Flatten``, then per hidden layer ``Dense`` (no bias
under batch norm) -> ``BatchNormalization`` (PyTorch's eps 1e-5 and momentum) -> activation,
logits (batch norm on them where the recipe has it), sparse cross-entropy from logits, the
recipe's SGD, the same batch size, shuffled each epoch, validation with the eval batch size
at each epoch's end. An epoch is timed like ``bench.common.EpochTimer``: from one epoch's start
to the next (the last to the end of training), validation included.

Missing packages: :func:`missing` says which and how to install them (``pip install
'dnnkit[bench]'``); the bench skips the contender with that line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = {"keras-jax": "jax", "keras-torch": "torch"}
INSTALL = "pip install 'dnnkit[bench]'"
SCALES = {"he": 2.0, "kaiming": 2.0, "xavier": 1.0, "glorot": 1.0, "lecun": 1.0}
MODES = {"he": "fan_in", "kaiming": "fan_in", "xavier": "fan_avg", "glorot": "fan_avg", "lecun": "fan_in"}
DISTRIBUTIONS = {"normal": "untruncated_normal", "uniform": "uniform", "truncated_normal": "truncated_normal"}
ACTIVATIONS = ("elu", "selu", "relu", "tanh", "sigmoid", "gelu", "leaky_relu")


class Skipped(Exception):
    """The contender cannot run: its packages are missing, or the stage's network or optimizer has
    no Keras twin here. The message is the one line the bench prints."""


def missing(contender: str) -> str | None:
    """``None`` when ``contender``'s packages are importable, else the one-line reason to skip it."""
    need = ["keras"] + (["jax"] if BACKENDS[contender] == "jax" else [])
    absent = [m for m in need if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"{contender}: skipped, {' and '.join(absent)} not installed ({INSTALL})"


# ----------------------------------------------------------------------------- the parent's side


def keras_spec(cfg, model, loader) -> dict:
    """The network, optimizer and input scaling of a stage as plain data for the child; raise
    :class:`Skipped` for what has no twin (a model other than dnnkit's MLP, an optimizer
    other than SGD, per-channel standardisation)."""
    from dnnkit.nn import MLP
    from dnnkit.nn.activations import default_init

    net, model, opt = model, cfg.model, cfg.optimizer
    if not isinstance(net, MLP):
        raise Skipped(f"the Keras peers build dnnkit's MLP only, not {type(net).__name__}")
    if opt.get("_target_") != "torch.optim.SGD" or opt.get("weight_decay", 0) or opt.get("dampening", 0):
        raise Skipped(f"the Keras peers use SGD (lr, momentum, nesterov) only, not {dict(opt)}")
    activation = model.get("activation", "elu")
    if activation not in ACTIVATIONS or model.get("activation_kwargs"):
        raise Skipped(f"activation {activation!r} (with {model.get('activation_kwargs')}) has no Keras twin here")
    init = model.get("init") or default_init(activation)
    if init not in SCALES:
        raise Skipped(f"init {init!r} has no Keras twin here (he, xavier/glorot, lecun)")
    if getattr(loader, "augment", None) is not None:
        raise Skipped("augmentation has no Keras twin here")
    if not isinstance(loader.scale, float) or not isinstance(loader.shift, float):
        raise Skipped("per-channel standardisation has no Keras twin here")
    return {
        "input_shape": list(loader.images.shape[1:]),
        "hidden": list(net.hidden_sizes),
        "n_outputs": int(net.n_outputs),
        "activation": activation,
        "batch_norm": bool(model.get("batch_norm", False)),
        "output_batch_norm": bool(model.get("output_batch_norm", False)),
        "bn_momentum": float(model.get("bn_momentum", 0.1)),
        "dropout": float(model.get("dropout", 0.0)),
        "init": {"scale": SCALES[init], "mode": model.get("init_mode") or MODES[init],
                 "distribution": DISTRIBUTIONS[model.get("init_distribution", "normal")]},
        "sgd": {"learning_rate": float(opt.lr), "momentum": float(opt.get("momentum", 0.0)),
                "nesterov": bool(opt.get("nesterov", False))},
        "scale": loader.scale,
        "offset": -loader.shift,
    }


class KerasPeer:
    """One long-lived child process fitting Keras on one backend; :meth:`fit` asks it for a fit.

    ``data`` is ``(train images, train labels, val images, val labels)`` (torch tensors, the
    loader's own); ``spec`` from :func:`keras_spec`; ``threads``: the intra-op threads the child
    may use (``None``: the backend's default)."""

    def __init__(self, contender: str, spec: dict, data, batch_size: int, eval_batch_size: int,
                 threads: int | None = None) -> None:
        import numpy as np

        self.contender = contender
        self._tmp = tempfile.TemporaryDirectory(prefix="dnnkit-bench-keras-")
        folder = Path(self._tmp.name)
        for name, t in zip(("x_train", "y_train", "x_val", "y_val"), data):
            np.save(folder / f"{name}.npy", t.numpy())
        spec = {**spec, "batch_size": batch_size, "eval_batch_size": eval_batch_size}
        (folder / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "KERAS_BACKEND": BACKENDS[contender], "TF_CPP_MIN_LOG_LEVEL": "2"}
        if threads:
            env["DNNKIT_BENCH_THREADS"] = str(threads)
            env["OMP_NUM_THREADS"] = str(threads)
            if threads == 1:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        self._log = open(folder / "stderr.txt", "w+")
        root = Path(__file__).resolve().parents[1]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.keras_peers", "--backend", BACKENDS[contender], str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=root, env=env,
        )
        self._answer()  # "ready": imports and data loading are not timed

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            tail = "".join(self._log.readlines()[-15:])
            raise RuntimeError(f"{self.contender}: the child process ended (status {self._proc.wait()}):\n{tail}")
        return json.loads(line)

    def fit(self, epochs: int, seed: int) -> dict:
        """``{"wall": [...], "cpu": [...], "fit_seconds": s, "val_acc": a}`` of one fresh fit."""
        self._proc.stdin.write(json.dumps({"epochs": epochs, "seed": seed}) + "\n")
        self._proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self._tmp.cleanup()


# ----------------------------------------------------------------------------- the child's side


def build_model(spec: dict):
    """The Keras twin of the spec's MLP (the child imports Keras with its backend set)."""
    import keras

    def init():
        return keras.initializers.VarianceScaling(**spec["init"])

    def bn():
        return keras.layers.BatchNormalization(momentum=1.0 - spec["bn_momentum"], epsilon=1e-5)

    layers = [keras.Input(shape=tuple(spec["input_shape"]), dtype="uint8"),
              keras.layers.Rescaling(spec["scale"], spec["offset"]), keras.layers.Flatten()]
    for units in spec["hidden"]:
        layers.append(keras.layers.Dense(units, use_bias=not spec["batch_norm"], kernel_initializer=init()))
        if spec["batch_norm"]:
            layers.append(bn())
        layers.append(keras.layers.Activation(spec["activation"]))
        if spec["dropout"]:
            drop = keras.layers.AlphaDropout if spec["activation"] == "selu" else keras.layers.Dropout
            layers.append(drop(spec["dropout"]))
    layers.append(keras.layers.Dense(spec["n_outputs"], use_bias=not spec["output_batch_norm"], kernel_initializer=init()))
    if spec["output_batch_norm"]:
        layers.append(bn())
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(**spec["sgd"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def epoch_timer():
    """A Keras callback stamping (wall, CPU) at each epoch's start and at the end of training."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[tuple[float, float]] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.stamps.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, logs=None) -> None:
            self.stamps.append((time.perf_counter(), time.process_time()))

    return EpochTimer()


def serve(backend: str, folder: Path, requests, replies) -> None:
    """Answer ``{"epochs": n, "seed": s}`` lines from ``requests`` with one fit's timings each."""
    import keras
    import numpy as np

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    threads = os.environ.get("DNNKIT_BENCH_THREADS")
    if backend == "torch" and threads:
        import torch

        torch.set_num_threads(int(threads))
    spec = json.loads((folder / "spec.json").read_text())
    x, y, xv, yv = (np.load(folder / f"{n}.npy") for n in ("x_train", "y_train", "x_val", "y_val"))

    def reply(obj) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    reply({"ready": True, "keras": keras.__version__, "backend": backend})
    for line in requests:
        job = json.loads(line)
        keras.utils.set_random_seed(int(job["seed"]))
        model = build_model(spec)
        timer = epoch_timer()
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=spec["batch_size"], epochs=int(job["epochs"]), shuffle=True, verbose=0,
                            validation_data=(xv, yv), validation_batch_size=spec["eval_batch_size"], callbacks=[timer])
        seconds = time.perf_counter() - start
        s = timer.stamps
        reply({"wall": [b[0] - a[0] for a, b in zip(s, s[1:])], "cpu": [b[1] - a[1] for a, b in zip(s, s[1:])],
               "fit_seconds": seconds, "val_acc": float(history.history["val_accuracy"][-1])})
        keras.backend.clear_session()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.keras_peers",
                                description="the child process of bench.speed's Keras contenders (not run by hand)")
    p.add_argument("--backend", choices=sorted(set(BACKENDS.values())), required=True)
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr, not into the replies
    serve(args.backend, args.folder, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
