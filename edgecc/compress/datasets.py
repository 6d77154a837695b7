"""Labelled data for calibration, accuracy and training, with no download.

``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) with a fixed,
stratified train/test split; ``load`` also reads a user's ``.npz`` with arrays ``x`` and ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._util import read_npz
from ..errors import InputError

BUILTIN = ("digits",)


@dataclass(frozen=True)
class Labelled:
    x: np.ndarray  # (N, ...) float32
    y: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Split:
    train: Labelled
    test: Labelled


def digits(*, seed: int = 0, test_fraction: float = 0.25) -> Split:
    """The digits as (N, 1, 8, 8) float32 in [0, 1]; the split is fixed by ``seed``."""
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415
        from sklearn.model_selection import train_test_split  # noqa: PLC0415
    except ImportError as e:
        raise InputError("the digits data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    return Split(Labelled(np.ascontiguousarray(xtr), ytr), Labelled(np.ascontiguousarray(xte), yte))


def load(spec: str | Path, *, split: str = "train") -> Labelled:
    """``digits`` (its ``split``: train or test) or an ``.npz`` file with arrays ``x`` and ``y``."""
    if str(spec) in BUILTIN:
        s = digits()
        return s.train if split == "train" else s.test
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"data '{spec}' not found: give 'digits' or an .npz file with arrays "
                         "x and y")
    arrays = read_npz(path, what=f"'{path}'")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise InputError(f"'{path}' has no array {' or '.join(missing)} (found: "
                         f"{', '.join(sorted(arrays)) or 'none'}); expected x (N, ...) and y (N,)")
    x, y = arrays["x"], arrays["y"]
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise InputError(f"'{path}': x has {x.shape[0]} samples but y has shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"'{path}': labels y must be integers, got {y.dtype}")
    return Labelled(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64))
