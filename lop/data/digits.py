"""scikit-learn's bundled 8×8 handwritten digits: the embedded offline data of the "permuted digits" problem."""

from __future__ import annotations

import numpy as np

N_EXAMPLES, N_FEATURES, N_CLASSES = 1797, 64, 10


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` float32 [1797, 64] in [0, 1] (pixel values / 16) and ``y`` int64 [1797] in 0..9."""
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    x = (np.asarray(d.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(d.target, dtype=np.int64)
    return x, y
