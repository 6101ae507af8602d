"""Writing MNIST-format IDX files for tests."""

from __future__ import annotations

from pathlib import Path


def write_idx(path: Path, array, gz: bool = False) -> Path:
    """Write a uint8 array in the IDX format (optionally gzipped)."""
    import gzip
    import struct

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def synthetic_digits(n: int, seed: int):
    """Learnable 28×28 images: class c is a bright vertical bar at column 2 + 2.5c, plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        col = 2 + int(2.5 * c)
        images[i, 4:24, col : col + 2] = 255
    return images, labels
