"""Writing the shard stage's output: deterministic WebDataset tars, a streamed Parquet index, and the stats.

`write_shards(out, source, splits, ...)` writes the tars of a source's train and test splits, one tar per
`shard_size` samples numbered in key order, and streams their index rows into `out/index.parquet` (memory holds
one block of rows, not the dataset). With `part=K, parts=P` it writes only the K-th of P contiguous runs of each
split's tars: P shard jobs over slices of the source (the pipeline's `shard.parts`) write exactly the tars, keys
and bytes that one job writes. `gather_parts(out)` then joins the parts' indexes and stats into `out`'s
index.parquet, stats.json and classes.json. Reading shards back: tokenforge/data/shards.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tokenforge.data.shards import INDEX_SCHEMA, SPLITS, TAR_OWNER, encode_png, prepare_image
from tokenforge.data.sources import Source
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_file, read_json, write_json
from tokenforge.runtime import progress

INDEX_BLOCK = 65536  # index rows buffered before they are written as one row group


class IndexWriter:
    """Streams index rows into a Parquet file and keeps the sums stats.json needs."""

    def __init__(self, path: Path):
        self.path, self.rows, self.writer = path, [], None
        self.counts = {split: 0 for split in SPLITS}
        self.png_bytes = 0
        self.text = {"qa_pairs": {s: 0 for s in SPLITS}, "captions": {s: 0 for s in SPLITS}}

    def add(self, row: dict, text: dict | None) -> None:
        self.counts[row["split"]] += 1
        self.png_bytes += row["bytes"]
        if text is not None:
            self.text["qa_pairs"][row["split"]] += len(text.get("qa", []))
            self.text["captions"][row["split"]] += len(text.get("captions", []))
        self.rows.append(row)
        if len(self.rows) >= INDEX_BLOCK:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, INDEX_SCHEMA, compression="zstd")
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=INDEX_SCHEMA))
        self.rows = []

    def close(self) -> None:
        if self.rows or self.writer is None:
            self.flush()
        self.writer.close()


def part_range(count: int, shard_size: int, part: int, parts: int) -> range:
    """The tar numbers part `part` of `parts` writes for a split of `count` samples: a contiguous run, so the
    parts' tars read in part order are the split in key order."""
    tars = math.ceil(count / shard_size)
    return range(part * tars // parts, (part + 1) * tars // parts)


def write_shards(
    out: Path, source: Source, splits: np.ndarray, mode: str, image_size: int | None, shard_size: int,
    part: int = 0, parts: int = 1,
) -> tuple[IndexWriter, tuple[int, int] | None]:
    """Write this part's tar shards of every split and index.parquet into `out`; returns the index's sums and the
    (H, W) size (None when the part holds no image)."""
    plan = {split: np.flatnonzero(splits == split) for split in SPLITS}
    tars = {split: part_range(len(m), shard_size, part, parts) for split, m in plan.items()}
    total = sum(min(len(plan[s]), t.stop * shard_size) - t.start * shard_size for s, t in tars.items() if len(t))
    index, size, first_id = IndexWriter(out / "index.parquet"), (image_size, image_size) if image_size else None, ""
    bar = progress(total=total, desc=f"shard {part + 1}/{parts}" if parts > 1 else "shard", unit="img")
    for split, members in plan.items():
        width = max(6, len(str(len(members) - 1)))  # keys sort in sample order
        for shard_no in tars[split]:
            shard = f"{split}-{shard_no:06d}.tar"
            with _tar_writer(out / shard) as tar:
                for j in range(shard_no * shard_size, min((shard_no + 1) * shard_size, len(members))):
                    i = int(members[j])
                    img = prepare_image(source.image(i), mode, image_size)
                    if size is None:
                        size, first_id = (img.height, img.width), source.ids[i]
                    elif (img.height, img.width) != size:
                        raise TokenforgeError(
                            f"source {source.spec!r}: image {source.ids[i]} is {img.width}x{img.height} but "
                            f"{first_id or 'the first'} is {size[1]}x{size[0]}; pass --image-size N to resize all images"
                        )
                    text = source.texts[i] if source.texts is not None else None
                    key = f"{split}_{j:0{width}d}"
                    index.add(_write_sample(tar, key, img, int(source.labels[i]), source, i, split, shard), text)
                    bar.update(1)
    bar.close()
    index.close()
    return index, size


def _tar_writer(path: Path):
    """A WebDataset TarWriter whose headers are fixed: mtime 0, uid/gid 0, one owner name."""
    import webdataset as wds

    return wds.TarWriter(str(path), user=TAR_OWNER, group=TAR_OWNER, mode=0o444, mtime=0, encoder=False)


def _write_sample(tar, key: str, img: Image.Image, label: int, source: Source, i: int, split: str, shard: str) -> dict:
    png = encode_png(img)
    meta = {"label": label, "class_name": source.class_names[label], "source_id": source.ids[i]}
    if source.texts is not None:  # only then: the tars of image-only sources stay as they were
        meta["text"] = source.texts[i]
    tar.write(
        {
            "__key__": key,
            "png": png,
            "cls": str(label).encode("ascii"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
        }
    )
    return {"key": key, "label": label, "class_name": meta["class_name"], "split": split, "shard": shard, "bytes": len(png)}


def shard_stats(spec: str, source: Source, index: IndexWriter, size: tuple[int, int] | None, channels: int, out: Path) -> dict:
    """stats.json of one shard job: counts, bytes per image (raw, PNG, whole tar files), text counts."""
    n = sum(index.counts.values())
    shard_bytes = sum(p.stat().st_size for p in sorted(out.glob("*.tar")))
    text = {"text": True, **index.text} if source.texts is not None else {}
    return {
        "source": spec,
        "num_classes": len(source.class_names),
        "image_size": list(size) if size else None,
        "channels": channels,
        "counts": dict(index.counts),
        "raw_bytes_per_image": size[0] * size[1] * channels if size else None,
        "png_bytes_per_image": round(index.png_bytes / n, 3) if n else None,
        "shard_bytes_per_image": round(shard_bytes / n, 3) if n else None,
        "split_from": "source" if source.splits is not None else "seed",
        **text,
    }


def gather_parts(out: Path, parts: int) -> dict:
    """Join `out/part-000 .. part-<parts-1>` (each one `tokenforge shard --part K --parts P`) into `out`'s
    index.parquet and classes.json, each written atomically; returns the joined stats for stats.json (the parts'
    own wall time and resources under "part_resources")."""
    dirs = [out / f"part-{k:03d}" for k in range(parts)]
    stats = [read_json(d / "stats.json") for d in dirs]
    sizes = {tuple(s["image_size"]) for s in stats if s.get("image_size")}
    if len(sizes) > 1:
        raise TokenforgeError(f"{out}: the parts' images differ in size {sorted(sizes)}; pass --image-size N")
    counts = {split: sum(s["counts"][split] for s in stats) for split in SPLITS}
    n = sum(counts.values())
    weighted = lambda key: round(sum((s[key] or 0) * sum(s["counts"].values()) for s in stats) / n, 3)  # noqa: E731
    merged = {k: v for k, v in stats[0].items() if k not in ("part", "wall_s", "resources")}
    merged.update(counts=counts, png_bytes_per_image=weighted("png_bytes_per_image"))
    merged["shard_bytes_per_image"] = weighted("shard_bytes_per_image")
    merged["image_size"] = list(sizes.pop()) if sizes else None
    merged["raw_bytes_per_image"] = math.prod(merged["image_size"]) * merged["channels"] if merged["image_size"] else None
    if stats[0].get("text"):
        for what in ("qa_pairs", "captions"):
            merged[what] = {split: sum(s[what][split] for s in stats) for split in SPLITS}
    merged["parts"] = parts
    merged["part_resources"] = [{"wall_s": s.get("wall_s"), **s.get("resources", {})} for s in stats]
    with atomic_file(out / "index.parquet") as tmp:
        with pq.ParquetWriter(tmp, INDEX_SCHEMA, compression="zstd") as writer:
            for d in dirs:  # a row group at a time
                for batch in pq.ParquetFile(d / "index.parquet").iter_batches(batch_size=8192):
                    table = pa.Table.from_batches([batch]).cast(INDEX_SCHEMA)
                    shard = pa.array([f"{d.name}/{v}" for v in table.column("shard").to_pylist()], pa.string())
                    writer.write_table(table.set_column(INDEX_SCHEMA.get_field_index("shard"), "shard", shard))
    write_json(out / "classes.json", read_json(dirs[0] / "classes.json"))
    return merged
