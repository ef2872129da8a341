"""Several sources as one (`vqa2:/a+clevr:/b`): label k and class name k belong to the k-th source."""

from __future__ import annotations

import bisect

import numpy as np
from PIL import Image

from tokenforge.data.sources.base import Source
from tokenforge.errors import TokenforgeError


def dataset_name(source: Source) -> str:
    """A text source's dataset (its one class), else the kind of its spec ("cifar", "shapes")."""
    if source.texts is not None and len(source.class_names) == 1:
        return source.class_names[0]
    return source.spec.partition(":")[0]


def join_sources(sources: list[Source]) -> Source:
    """Several sources as one, in order: label k and class name k for the k-th (its own labels are dropped).

    Class names are the dataset names, "-2", "-3" appended to repeats (vqa2, vqa2-2); ids are
    "<class name>/<id>". Mode is RGB if any source is RGB (images are converted). The sources must agree on
    splits (all have their own train/test split, or none has) and on text (all have records, or none has);
    otherwise it is an error, as a joined split by seed would mix per-dataset splits.
    """
    if not sources:
        raise TokenforgeError("join: no sources to join")
    spec = "+".join(s.spec for s in sources)
    bases = [dataset_name(s) for s in sources]
    names = [f"{base}-{bases[:k].count(base) + 1}" if base in bases[:k] else base for k, base in enumerate(bases)]
    for attr, what in (("splits", "its own train/test split"), ("texts", "text records")):
        has = [getattr(s, attr) is not None for s in sources]
        if any(has) and not all(has):
            yes, no = names[has.index(True)], names[has.index(False)]
            raise TokenforgeError(
                f"source {spec!r}: {yes} has {what} but {no} has none; join sources that all have or all lack it"
            )
    mode = "RGB" if any(s.mode == "RGB" for s in sources) else sources[0].mode
    starts = np.cumsum([0] + [len(s) for s in sources[:-1]]).tolist()

    def load(i: int) -> Image.Image:
        part = bisect.bisect_right(starts, i) - 1
        img = sources[part].image(i - starts[part])
        return img if img.mode == mode else img.convert(mode)

    return Source(
        spec=spec,
        class_names=names,
        mode=mode,
        labels=np.concatenate([np.full(len(s), k, dtype=np.int64) for k, s in enumerate(sources)]),
        ids=[f"{name}/{i}" for name, s in zip(names, sources) for i in s.ids],
        splits=None if sources[0].splits is None else [x for s in sources for x in s.splits],
        load=load,
        texts=None if sources[0].texts is None else [t for s in sources for t in s.texts],
    )
