"""List each code's nearest other codes in the tokenizer's codebook (the synonyms used by token augmentation).

  tokenforge synonyms --tokenizer results/tokenizer --out results/synonyms.json --k 5

Similarity is the cosine of the codebook vectors; each code's k most similar other codes come most similar
first, ties going to the lower id. The output is SeiT's `codebook-synonyms.json` layout, one line per code:
{"0": [ids...], "1": [ids...], ...}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenforge.io import atomic_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file: code id -> list of similar ids")
    parser.add_argument("--k", type=int, default=5, help="synonyms per code (SeiT's token augmentation uses 5)")


def run(args: argparse.Namespace, tracker) -> None:
    import numpy as np

    from tokenforge.tokenizer.synonyms import (
        cosine_similarity,
        nearest_codes,
        synonyms_json,
    )
    from tokenforge.tokenizer.vq import load_codebook

    codebook = load_codebook(args.tokenizer).numpy()
    neighbours = nearest_codes(codebook, args.k)
    with atomic_file(args.out) as tmp:
        tmp.write_text(synonyms_json(neighbours))
    sim = cosine_similarity(codebook)
    top1 = sim[np.arange(len(codebook)), neighbours[:, 0]]
    tracker.log_params({"k": args.k, "codebook_size": len(codebook)})
    tracker.log_metrics({"mean_top1_cosine": float(top1.mean())})
    tracker.log_artifact(args.out)
