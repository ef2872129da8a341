"""How much of a VQA or captioning memory's bytes is text, at the example grid and at a larger one?

    .venv/bin/python benchmarks/vqa_text_share.py                     # 24 and 48 px scenes (about 6 min on 1 core)
    .venv/bin/python benchmarks/vqa_text_share.py --sizes 24 --rows 20 --tokenizer-epochs 1 --out /tmp/look

A text family's memory row (continual/memory.py) stores the kept positions and code ids of its image beside its
question and answer (VQA) or its caption, all in one zstd-19 Arrow stream: the budget pays for the text too.
In config/vqa.yaml's setting (24 px scenes, 12x12 grids, 25% of the tokens kept) the text costs about as much as
the tokens, so at equal bytes core tokens buy few more items than whole grids. Issue 27 asks how that changes at a
larger grid, where an image holds more tokens and the text is relatively cheaper.

For each scene size (--sizes; downsample 2, so 24 px -> 12x12, 48 px -> 24x24), the package's own stages make
the data once in --work (`tokenforge shard --source scenes`, `tokenizer` with config/vqa.yaml's tokenizer,
`tokenize`; the same helper as benchmarks/vqa_curves.py). Then, for each family and each kept share of the grid
(--fractions: core tokens at 25%, whole grids at 100%), --rows training items are drawn (seed 0), each keeping
that many of its image's tokens at random positions (scattered positions compress least: a scorer's, clustered on
the objects, can cost a little less), and the memory is serialised as the pipeline writes it, three times: whole,
without its text columns, and without text or tokens. The differences are the text's and the tokens' bytes; the
rest is keys, labels and the container. Each is measured with the kept positions stored as a list of small ints
and as a bitmask of the grid (continual/memory.py's two encodings; the pipeline writes the smaller one).
Writes benchmarks/results/vqa-text-share.json and .md (docs/benchmarks/vqa-sequence.md renders it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vqa_curves import prepare  # noqa: E402  (shards, tokenizer and tokens of a scene set, made once)

TOKENIZER = dict(codebook=64, code_dim=16, hidden=64, downsample=2)  # config/vqa.yaml's tokenizer
ENCODINGS = ("list", "mask")  # the kept positions as a list of small ints, or as a bitmask of the grid


def memory_bytes(rows, num_codes: int, num_positions: int, positions: str) -> dict[str, int]:
    """Bytes on disk of `rows` (a Memory) whole, without its text, and without text or tokens, with the kept positions
    stored as `positions` ("list" or "mask": continual/memory.py); text and token bytes."""
    from dataclasses import replace

    import numpy as np

    from tokenforge.continual.memory import serialize

    def size(memory, encoding: str = positions) -> int:  # labels and tasks as uint8, as for a few groups' memory
        return len(serialize(memory, num_codes, num_positions, num_classes=256, positions=encoding))

    whole = size(rows)
    no_text = size(replace(rows, extra={}))
    empty = np.zeros((len(rows), 1), np.int64)  # one position and id per row: the smallest valid list width
    bare = size(replace(rows, extra={}, positions=empty, ids=empty), "list")
    return {"whole": whole, "text": whole - no_text, "tokens": no_text - bare, "rest": bare}


def measure(d: Path, family_name: str, fractions: list[float], rows: int) -> list[dict]:
    import numpy as np

    from tokenforge.data.tokens import load_tokens
    from tokenforge.families.multimodal import VQA, Captioning
    from tokenforge.families.text_data import TextData
    from tokenforge.families.text_memory import item_rows

    train = load_tokens(d / "tokens" / "train.parquet")
    family = VQA(by="family") if family_name == "vqa" else Captioning(by="object")
    items = family.items(train.texts, None)
    data = TextData(list(train.keys), train.ids, train.texts)
    h, w = train.ids.shape[1:3]
    n = h * w
    rng = np.random.default_rng(0)
    order = np.sort(rng.choice(len(items), size=min(rows, len(items)), replace=False))
    labels = np.zeros(len(items), np.int64)
    out = []
    for fraction in fractions:
        k = max(1, round(fraction * n))
        positions = np.sort(np.stack([rng.choice(n, size=k, replace=False) for _ in order]), axis=1)
        memory = item_rows(items, order, data, positions, 0, labels)
        for encoding in ENCODINGS:
            parts = memory_bytes(memory, TOKENIZER["codebook"], n, encoding)
            out.append({"family": family_name, "grid": f"{h}x{w}", "tokens_kept": k, "positions": encoding,
                        "rows": len(order), **{f"{key}_bytes_per_row": v / len(order) for key, v in parts.items()},
                        "text_share": parts["text"] / parts["whole"], "token_share": parts["tokens"] / parts["whole"]})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    lines = ["| family | grid | tokens kept | positions | bytes per row | text | tokens | text share |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['family']} | {r['grid']} | {r['tokens_kept']} | {r['positions']} | {r['whole_bytes_per_row']:.1f} | "
                     f"{r['text_bytes_per_row']:.1f} | {r['tokens_bytes_per_row']:.1f} | {100 * r['text_share']:.0f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 48], help="scene sizes in pixels (default: 24 48)")
    parser.add_argument("--scenes", type=int, default=600, help="scenes per size (config/vqa.yaml's 600)")
    parser.add_argument("--tokenizer-epochs", type=int, default=30, help="tokenizer epochs (config/vqa.yaml's 30)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0], help="kept shares of the grid")
    parser.add_argument("--rows", type=int, default=100, help="memory rows per measurement (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the tokenizer (default 1)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "vqa_text_share", help="where the data are made")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON and Markdown go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    start, rows = time.time(), []
    for size in args.sizes:
        p = dict(TOKENIZER, scenes=args.scenes, size=size, tokenizer_epochs=args.tokenizer_epochs, threads=args.threads)
        d = prepare(args.work, p)
        for family in ("vqa", "captioning"):
            rows += measure(d, family, args.fractions, args.rows)
    result = {"benchmark": "vqa_text_share", "scenes": args.scenes, "tokenizer_epochs": args.tokenizer_epochs,
              "tokenizer": TOKENIZER, "rows": rows, "wall_s": time.time() - start, "machine": platform.machine(),
              "python": platform.python_version()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vqa-text-share.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "vqa-text-share.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
