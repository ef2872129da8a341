"""List each code's nearest other codes in the tokenizer's codebook (the synonyms used by token augmentation).

  tokenforge synonyms --tokenizer results/tokenizer --out results/synonyms.json --k 5

Similarity is the cosine of the codebook vectors; each code's k most similar other codes come most similar
first, ties going to the lower id. The output is SeiT's `codebook-synonyms.json` layout, one line per code:
{"0": [ids...], "1": [ids...], ...}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .errors import TokenforgeError
from .io import atomic_file

# Similarities are rounded before sorting so that float noise cannot break a true tie (e.g. two codes at the
# same angle) against the lower id: a float32 codebook (the tokenizer's) carries ~1e-7 relative error, so
# cosines closer than ~1e-6 are indistinguishable and count as tied.
DECIMALS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file: code id -> list of similar ids")
    parser.add_argument("--k", type=int, default=5, help="synonyms per code (SeiT's token augmentation uses 5)")


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


def run(args: argparse.Namespace, tracker) -> None:
    from .tokenizer import load_codebook

    codebook = load_codebook(args.tokenizer).numpy()
    neighbours = nearest_codes(codebook, args.k)
    with atomic_file(args.out) as tmp:
        tmp.write_text(synonyms_json(neighbours))
    sim = cosine_similarity(codebook)
    top1 = sim[np.arange(len(codebook)), neighbours[:, 0]]
    tracker.log_params({"k": args.k, "codebook_size": len(codebook)})
    tracker.log_metrics({"mean_top1_cosine": float(top1.mean())})
    tracker.log_artifact(args.out)
