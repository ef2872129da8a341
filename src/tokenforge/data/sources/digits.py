"""The `digits` source: scikit-learn's bundled 8x8 handwritten digits (1797 grayscale images, 10 classes)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tokenforge.data.sources.base import Source, SourceOptions, refuse_path


def open_digits(path: str | None, options: SourceOptions) -> Source:
    """The `digits` reader: no PATH, no options."""
    refuse_path("digits", path)
    return digits_source()


def digits_source() -> Source:
    """scikit-learn's bundled digits: values 0..16 scaled to 0..255 (rounded), grayscale 8x8."""
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only this source needs it

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return Source(
        spec="digits",
        class_names=[str(c) for c in range(10)],
        mode="L",
        labels=labels,
        ids=[f"digits/{i}" for i in range(len(labels))],
        splits=None,
        load=lambda i: Image.fromarray(images[i]),
    )
