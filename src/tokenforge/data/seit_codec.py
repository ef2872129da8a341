"""SeiT's byte code for token ids (the format: tokenforge/data/seit.py): encoding, vectorised decoding, index checks.

An id below 255 is one byte; an id of 255 or more is the byte 255 followed by the byte id - 255. Image i of a
decompressed stream is bytes [index[i], index[i+1]) of it.
"""

from __future__ import annotations

import math

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.runtime import progress

ESCAPE = 255
MAX_ID = 509  # 254 + 255: the largest id their decoder reads back (see tokenforge/data/seit.py)
MAX_CODES = MAX_ID + 1
CHUNK = 65536  # images encoded or decoded at once: bounds the int64 temporaries to ~0.5 GB at 32x32


def encode_ids(ids: np.ndarray) -> bytes:
    """SeiT bytes of `ids` in order: one byte below 255, else 255 then id - 255. Ids outside 0..509 are refused."""
    flat = np.asarray(ids).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise TokenforgeError(f"ids: expected integers, got {flat.dtype}")
    if flat.size and (flat.min() < 0 or flat.max() > MAX_ID):
        bad = int(flat[(flat < 0) | (flat > MAX_ID)][0])
        raise TokenforgeError(f"ids: id {bad} does not fit SeiT's byte format (ids 0..{MAX_ID})")
    flat = flat.astype(np.int64)
    big = flat >= ESCAPE
    last = np.arange(flat.size) + np.cumsum(big)  # where each id's last (or only) byte lands
    out = np.empty(flat.size + int(big.sum()), dtype=np.uint8)
    out[last] = np.where(big, flat - ESCAPE, flat)
    out[last[big] - 1] = ESCAPE
    return out.tobytes()


def decode_stream(data: bytes, offsets: np.ndarray, grid: tuple[int, int], source: str, first: int = 0) -> np.ndarray:
    """(N, h, w) int64 ids of the N images of a decompressed SeiT stream; image i is data[offsets[i]:offsets[i+1]].

    Vectorised over chunks of images; a bad index, a truncated image or a wrong grid raises naming `source` and the
    image by its number in the split: `first` is the split's number of image 0 here (a piece of a longer stream).
    """
    offsets = check_offsets(offsets, len(data), source)
    h, w = (int(s) for s in grid)
    n = len(offsets) - 1
    stream = np.frombuffer(data, dtype=np.uint8)
    out = np.empty((n, h * w), dtype=np.int64)
    starts = range(0, n, CHUNK)
    for a in progress(starts, desc="decode") if len(starts) > 1 else starts:
        b = min(a + CHUNK, n)
        ends = offsets[a + 1 : b + 1] - offsets[a]
        ids, counts = _decode_chunk(stream[offsets[a] : offsets[b]], ends, source, first + a)
        wrong = np.flatnonzero(counts != h * w)
        if wrong.size:
            i = int(wrong[0])
            raise TokenforgeError(
                f"{source}: image {first + a + i} has {int(counts[i])} tokens but the grid {h}x{w} needs {h * w}"
            )
        out[a:b] = ids.reshape(b - a, h * w)
    return out.reshape(n, h, w)


def _decode_chunk(seg: np.ndarray, ends: np.ndarray, source: str, first: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, tokens per image) of the images whose bytes are `seg`, image j ending at byte ends[j] of it."""
    escapes = np.flatnonzero(seg == ESCAPE)
    image_end = np.zeros(len(seg), dtype=bool)
    image_end[ends - 1] = True
    cut = escapes[image_end[escapes]]
    if cut.size:
        image = first + int(np.searchsorted(ends, cut[0], side="right"))
        raise TokenforgeError(f"{source}: image {image} ends in an escape byte 255 (truncated stream)")
    double = escapes[seg[escapes + 1] == ESCAPE]  # escapes + 1 stays inside: no escape ends an image
    if double.size:
        image = first + int(np.searchsorted(ends, double[0], side="right"))
        raise TokenforgeError(f"{source}: image {image} has the bytes 255 255, which no SeiT id encodes")
    values = seg.astype(np.int64)
    values[escapes + 1] += ESCAPE
    keep = np.ones(len(seg), dtype=bool)
    keep[escapes] = False
    tokens_before = np.concatenate([[0], np.cumsum(keep)])
    counts = np.diff(tokens_before[np.concatenate([[0], ends])])
    return values[keep], counts


def check_offsets(offsets: np.ndarray, length: int | None, source: str) -> np.ndarray:
    """`offsets` as int64 if it is a SeiT index: 1-D, from 0, increasing, and ending at `length` (unless None)."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) == 0 or not np.issubdtype(offsets.dtype, np.integer):
        raise TokenforgeError(
            f"{source}: index must be a 1-D integer array of N+1 offsets, got {offsets.dtype} {offsets.shape}"
        )
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0:
        raise TokenforgeError(f"{source}: index must start at 0, starts at {int(offsets[0])}")
    steps = np.flatnonzero(np.diff(offsets) <= 0)
    if steps.size:
        i = int(steps[0])
        raise TokenforgeError(
            f"{source}: index not increasing at entry {i + 1} ({int(offsets[i])} then {int(offsets[i + 1])})"
        )
    if length is not None and offsets[-1] > length:
        image = int(np.searchsorted(offsets, length, side="right")) - 1
        raise TokenforgeError(
            f"{source}: truncated stream: image {image} runs past its end ({length} bytes, index ends at "
            f"{int(offsets[-1])})"
        )
    if length is not None and offsets[-1] < length:
        raise TokenforgeError(f"{source}: index ends at byte {int(offsets[-1])} of a {length}-byte stream")
    return offsets


def square_grid(data: bytes, offsets: np.ndarray, source: str) -> tuple[int, int]:
    """The square grid SeiT's loader assumes, from the first image's token count."""
    if len(offsets) < 2:
        raise TokenforgeError(f"{source}: no images, so no grid to derive; pass --grid H W")
    first = np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[1])]
    count = int((first != ESCAPE).sum())
    side = math.isqrt(count)
    if side * side != count:
        raise TokenforgeError(f"{source}: image 0 has {count} tokens, not a square grid; pass --grid H W")
    return side, side
