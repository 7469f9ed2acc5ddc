"""Fashion-MNIST-shaped idx data written by the tests and by scripts/test_compat.py (numpy only, so that
the compatibility matrix can use it without the test suite's imports)."""
import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int):
    """28x28 grey images whose class decides a bright bar's position plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, y in enumerate(labels):
        r = 2 + 2 * y
        images[i, r:r + 3, 4:24] = 200 + rng.integers(0, 55)
        images[i, 6:22, 10 + (y % 3):14 + (y % 3)] += int(rng.integers(0, 100))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)
