"""Your own data as NumPy arrays in one ``.npz`` file: ``data=arrays data.path=FILE.npz``.

Keys (``np.savez(FILE, x_train=..., y_train=..., ...)``, compressed or not):

* ``x_train``, ``y_train``: required. ``x`` is one of
  - images ``(N, H, W)`` (one channel) or ``(N, H, W, C)`` channels-last (``C`` 1, 3 or 4, as
    NumPy, PIL and Keras store them; ``(N, C, H, W)`` is taken when only axis 1 looks like
    channels), uint8 ``0..255`` or float in ``[0, 1]`` (a float outside is refused: scale it, or
    store uint8);
  - feature vectors ``(N, F)`` for tabular data, any real dtype, kept float32 (``normalize=true``
    standardises each feature with the training split's mean and std).
  ``y`` holds integer class labels ``0..K-1`` (floats with whole values are accepted), one per
  sample; every class ``0..K-1`` must occur in ``y_train``.
* ``x_val``, ``y_val``: optional; when given they are the validation split (``val_size`` unused).
* ``x_test``, ``y_test``: optional; **without them a seeded ``test_size`` part (default 20 %) of
  the training arrays is held out as the test split**, the same samples for every ``seed`` (so
  seeds compare on one test set), and a log line says so.
* ``class_names``: optional string array of the ``K`` class names (default ``0``, ``1``, ...).

Only headers are read for :meth:`ArraysDataModule.input_shape` and the checks of keys, shapes
and lengths; the labels for the splits; the images at ``setup``. The file is loaded without
pickle (``allow_pickle=False``): object arrays are refused.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dnnkit.data.base import TensorDataModule, size_of
from dnnkit.errors import DnnkitError, shorten

log = logging.getLogger(__name__)

PAIRS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}
KNOWN_KEYS = (*[k for pair in PAIRS.values() for k in pair], "class_names")


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of each array in the ``.npz`` at ``path``, from the headers alone."""
    shown = shorten(path)
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise DnnkitError(f"data.path={shown!r} {why}; give an .npz file written by np.savez(path, x_train=..., y_train=...)")
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[member[:-4]] = (tuple(shape), dtype)
            return out
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DnnkitError(f"data.path={shown!r} is not a readable .npz file ({err}); write it with np.savez[_compressed]") from None


def image_layout(shape: tuple[int, ...]) -> str:
    """``features``, ``hw``, ``hwc`` or ``chw``: how one sample of an ``x`` array of ``shape`` is laid out."""
    if len(shape) == 2:
        return "features"
    if len(shape) == 3:
        return "hw"
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return "hwc"
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return "chw"
    raise DnnkitError(
        f"x arrays must be images (N, H, W) or (N, H, W, C) with C 1, 3 or 4, or feature vectors (N, F); got shape {shape}"
    )


class ArraysDataModule(TensorDataModule):
    """The arrays of an ``.npz`` file (see the module docstring for its keys).

    Args:
        path: the ``.npz`` file.
        val_size: validation samples from the training arrays (a count, or a fraction in (0, 1));
            unused when the file has ``x_val``/``y_val``.
        test_size: held out of the training arrays when the file has no ``x_test``/``y_test``.
        **kwargs: as for :class:`~dnnkit.data.base.TensorDataModule` (``batch_size``,
            ``classes``, ``n_per_class``, ``seed``, ``normalize``, ``augment``, ...).

    Example::

        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "blobs.npz")
        >>> rng = np.random.default_rng(0)
        >>> np.savez(path, x_train=rng.normal(size=(100, 5)), y_train=np.arange(100) % 2, class_names=["no", "yes"])
        >>> dm = ArraysDataModule(path, val_size=0.2, normalize=True)
        >>> dm.input_shape(), dm.class_names
        ((5,), ['no', 'yes'])
        >>> dm.setup()
        blobs.npz: no x_test/y_test, so 20 of the 100 training samples are held out as the test split (data.test_size=0.2)
        blobs.npz: 64 train, 16 val, 20 test samples
        >>> x, y = next(iter(dm.train_dataloader()))  # doctest: +ELLIPSIS
        blobs.npz: normalising with the training split's mean [...], std [...]
        >>> x.dtype, tuple(x.shape)
        (torch.float32, (64, 5))
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 200,
        eval_batch_size: int = 1000,
        val_size: int | float = 0.1,
        val_split: str = "random",
        classes: Sequence[int] | None = None,
        n_per_class: int | None = None,
        seed: int = 0,
        normalize: bool = False,
        augment: Sequence | None = None,
        test_size: int | float | None = 0.2,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_size, val_split, classes, n_per_class, seed, normalize, augment, test_size)
        if not isinstance(path, (str, Path)) or not str(path):
            raise DnnkitError(f"data.path must name an .npz file, got {path!r}")
        self.path = Path(path).expanduser()
        self.name = self.path.name
        self.headers = npz_headers(self.path)
        self._check_keys()
        self._labels: dict[str, torch.Tensor] = {}
        self._names: list[str] | None = None

    def _where(self, key: str) -> str:
        return f"data.path={shorten(self.path)!r}: {key}"

    def _check_keys(self) -> None:
        h, keys = self.headers, sorted(self.headers)
        for split, (x, y) in PAIRS.items():
            if split == "train" and (x not in h or y not in h):
                missing = [k for k in (x, y) if k not in h]
                held = ", ".join(keys) or "no arrays"
                raise DnnkitError(f"data.path={shorten(self.path)!r} has no {' or '.join(missing)} (it holds {held}); "
                                  f"valid keys: {', '.join(KNOWN_KEYS)}")
            if (x in h) != (y in h):
                have, lack = (x, y) if x in h else (y, x)
                raise DnnkitError(f"data.path={shorten(self.path)!r} has {have} but no {lack}; give both or neither")
            if x not in h:
                continue
            if len(h[y][0]) != 1:
                raise DnnkitError(f"{self._where(y)} must be one label per sample, shape (N,); got {h[y][0]}")
            if h[x][0][0] != h[y][0][0]:
                raise DnnkitError(f"{self._where(x)} holds {h[x][0][0]} samples but {y} {h[y][0][0]} labels; they must be as many")
            for key in (x, y):
                if h[key][1].kind not in "biuf" or h[key][1].kind == "b":
                    raise DnnkitError(f"{self._where(key)} has dtype {h[key][1]}; give numbers (uint8 or float images, integer labels)")
        layouts = {x: (image_layout(h[x][0]), self._sample_shape(h[x][0])) for x, _ in PAIRS.values() if x in h}
        if len(set(layouts.values())) > 1:
            shown = ", ".join(f"{k} {h[k][0]}" for k in layouts)
            raise DnnkitError(f"data.path={shorten(self.path)!r}: the x arrays' samples differ in shape ({shown}); they must be alike")

    @staticmethod
    def _sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        layout = image_layout(shape)
        if layout == "features":
            return (shape[1],)
        if layout == "hw":
            return (1, shape[1], shape[2])
        return (shape[3], shape[1], shape[2]) if layout == "hwc" else tuple(shape[1:])

    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image or ``(F,)`` of one feature vector, from ``x_train``'s header."""
        return self._sample_shape(self.headers["x_train"][0])

    def _array(self, key: str) -> np.ndarray:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return z[key]
        except ValueError as err:  # an object array needs pickle
            raise DnnkitError(f"{self._where(key)} cannot be read without pickle ({err}); store numbers or strings") from None

    def source_class_names(self) -> Sequence[str]:
        if self._names is None:
            labels = [self.source_labels(s) for s in PAIRS]
            top = max(int(t.max()) for t in labels if t is not None and len(t)) + 1
            if "class_names" in self.headers:
                names = self._array("class_names")
                if names.ndim != 1 or names.dtype.kind not in "US":
                    raise DnnkitError(f"{self._where('class_names')} must be a 1-D string array, got {names.dtype} {names.shape}")
                if len(names) < top:
                    raise DnnkitError(f"{self._where('class_names')} names {len(names)} classes but the labels reach {top - 1}; "
                                      f"labels must be 0..{len(names) - 1}")
                self._names = [str(n) for n in names]
            else:
                self._names = [str(i) for i in range(top)]
            present = torch.bincount(self.source_labels("train"), minlength=len(self._names))
            if (present == 0).any():
                missing = int((present == 0).nonzero()[0])
                raise DnnkitError(f"{self._where('y_train')} has no label {missing}: labels must be 0..K-1 with every class "
                                  f"present (found {sorted(set(self.source_labels('train').tolist()))[:20]}); renumber them from 0")
        return self._names

    def source_labels(self, split: str) -> torch.Tensor | None:
        x, y = PAIRS[split]
        if y not in self.headers:
            return None
        if split not in self._labels:
            raw = self._array(y)
            if raw.dtype.kind == "f":
                whole = np.isfinite(raw) & (raw == np.round(raw))
                if not whole.all():
                    i = int(np.flatnonzero(~whole)[0])
                    raise DnnkitError(f"{self._where(y)} holds {raw[i].item()!r} at index {i}; labels must be integers 0..K-1")
            bad = np.flatnonzero(raw < 0)
            if len(bad):
                raise DnnkitError(f"{self._where(y)} holds {raw[bad[0]].item()!r} at index {int(bad[0])}; labels must be integers 0..K-1")
            self._labels[split] = torch.from_numpy(raw.astype(np.int64))
        return self._labels[split]

    def load_source(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x_key = PAIRS[split][0]
        raw = self._array(x_key)
        layout = image_layout(raw.shape)
        if layout == "features":
            x = torch.from_numpy(raw.astype(np.float32))
            if not torch.isfinite(x).all():
                i = int((~torch.isfinite(x)).any(1).nonzero()[0])
                raise DnnkitError(f"{self._where(x_key)} row {i} holds NaN or infinity; features must be finite")
        else:
            if layout == "hwc":
                raw = raw.transpose(0, 3, 1, 2)
            x = torch.from_numpy(np.ascontiguousarray(self._pixels(x_key, raw)))
        return x, self.source_labels(split)

    def _pixels(self, key: str, raw: np.ndarray) -> np.ndarray:
        """uint8 as it is; whole numbers 0..255 as uint8; floats in [0, 1] as float32."""
        if raw.dtype == np.uint8:
            return raw
        lo, hi = (raw.min(), raw.max()) if raw.size else (0, 0)
        if raw.dtype.kind in "iu":
            if lo < 0 or hi > 255:
                raise DnnkitError(f"{self._where(key)} holds integer pixels in [{lo}, {hi}]; integer images must be 0..255")
            return raw.astype(np.uint8)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise DnnkitError(f"{self._where(key)} holds float pixels in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                              "(divide by 255, or store uint8 0..255)")
        return raw.astype(np.float32)

    def setup(self, stage: str | None = None) -> None:
        if not self._splits and "x_test" not in self.headers and self.test_size is not None:
            n = self.headers["y_train"][0][0]
            log.info("%s: no x_test/y_test, so %d of the %d training samples are held out as the test split (data.test_size=%s)",
                     self.name, size_of("data.test_size", self.test_size, n), n, self.test_size)
        super().setup(stage)
