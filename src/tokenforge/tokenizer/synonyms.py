"""Each code's nearest other codes in the tokenizer's codebook, the synonyms of token augmentation.

Similarity is the cosine of the codebook vectors; each code's k most similar other codes come most similar
first, ties going to the lower id (`nearest_codes`). `synonyms_json` writes SeiT's `codebook-synonyms.json`
layout, one line per code. The stage: tokenforge/cli/synonyms.py.
"""

from __future__ import annotations

import json

import numpy as np

from tokenforge.errors import TokenforgeError

# Similarities are rounded before sorting so that float noise cannot break a true tie (e.g. two codes at the
# same angle) against the lower id: a float32 codebook (the tokenizer's) carries ~1e-7 relative error, so
# cosines closer than ~1e-6 are indistinguishable and count as tied.
DECIMALS = 6




def cosine_similarity(codebook: np.ndarray) -> np.ndarray:
    """(K, K) cosine similarities of the rows; a zero row is 0-similar to everything."""
    vectors = np.asarray(codebook, dtype=np.float64)
    if vectors.ndim != 2:
        raise TokenforgeError(f"codebook: expected a (codes, dim) matrix, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def nearest_codes(codebook: np.ndarray, k: int) -> np.ndarray:
    """(K, k) int64: row i holds the k codes most cosine-similar to code i (never i), best first, ties to lower id."""
    size = len(codebook)
    if not 1 <= k <= size - 1:
        raise TokenforgeError(f"--k {k}: must be between 1 and {size - 1} (the codebook size minus 1)")
    sim = np.round(cosine_similarity(codebook), DECIMALS)
    np.fill_diagonal(sim, -np.inf)  # a code is not its own synonym
    # A stable sort of -sim keeps equal similarities in id order, so ties go to the lower id.
    order = np.argsort(-sim, axis=1, kind="stable")
    return order[:, :k].astype(np.int64)


def synonyms_json(neighbours: np.ndarray) -> str:
    """JSON text {"0": [...], "1": [...], ...}, keys in numeric order, one code per line."""
    lines = [f"  {json.dumps(str(i))}: {json.dumps([int(j) for j in row])}" for i, row in enumerate(neighbours)]
    return "{\n" + ",\n".join(lines) + "\n}\n"


