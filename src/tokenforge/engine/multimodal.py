"""One task's training job and one evaluation row for the multimodal families (VQA, captioning) on BLIP.

The job mirrors the classification one (engine/train.py) and shares its machinery: the same DeepSpeed engine
(engine/deepspeed.py), the training loop with its progress bar, MLflow metrics and exact resume after a kill
(engine/loop.py, engine/callbacks.py, engine/checkpoint.py), the replay of a memory of token subsets with batch
input dropout (continual/replay.py), and the memory file (continual/memory.py), whose rows here also carry their
item's text (`prompt`, `target`). What differs is the family (families/multimodal.py): items in place of labels,
BLIP (models/blip.py) in place of the ViT, and a per-item text loss.

Memory (`memory.method`), after task t, under one byte budget on disk for all tasks together:
- `coreset`: whole token grids of items drawn at random (seeded) from the task, with their text;
- `coretokenset`: the same draw, each item keeping its top `token_fraction` of tokens by relevance for its
  target (`memory.scorer`: `atman` or `gradient`, `random` as the control), so more items fit in the bytes;
- `none` (fine-tuning) and `joint` (every task so far, no memory: the upper bound).
Each task so far gets the same number of rows, as many as the budget holds (the largest count whose serialised
memory fits), older tasks giving up their last-drawn rows. Selection is random here; the paper's GradMatch
coreset is not built.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge import families
from tokenforge.continual.memory import MEMORY_FILE, Memory, kept_units, read_memory, serialize
from tokenforge.continual.policy import keep_count, resolve_budget
from tokenforge.continual.replay import Replay, ReplayConfig
from tokenforge.engine.callbacks import Checkpointing, ProgressBar, Tracking, max_rss_mb
from tokenforge.engine.checkpoint import Checkpointer, fingerprint
from tokenforge.engine.deepspeed import build_engine
from tokenforge.engine.loop import TrainLoop, rank_slice
from tokenforge.errors import TokenforgeError
from tokenforge.families.multimodal import Items, task_items
from tokenforge.io import atomic_dir, read_json, write_json
from tokenforge.runtime import compute_device, progress, seed_everything

MM_METHODS = ("none", "coreset", "coretokenset", "joint")
MM_SCORERS = ("atman", "gradient", "random")


# --- data ----------------------------------------------------------------------------------------------------


@dataclass
class TextData:
    """One split: keys, units (N, h, w[, F]) and the text record of every image."""

    keys: list[str]
    units: np.ndarray
    records: list[dict]


def load_text_data(input_kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int) -> TextData:
    """A split's units and text: code ids from the token file, or pixel patches from the shards (their json)."""
    if input_kind == "tokens":
        from tokenforge.data.tokens import load_tokens

        if tokens is None:
            raise TokenforgeError("--tokens: required with --input tokens")
        data = load_tokens(tokens)
        keys, units, records, where = data.keys, data.ids, data.texts, tokens
    else:
        from tokenforge.data.shards import load_split
        from tokenforge.models.vit import patchify

        if shards is None:
            raise TokenforgeError("--shards: required with --input pixels")
        images = load_split(shards, split)
        keys, records, where = images.keys, images.texts, shards
        units = patchify(torch.from_numpy(images.images), patch).numpy()
    if records is None:
        raise TokenforgeError(f"{where}: no text with the images; shard a text source (scenes, vqa2:, clevr:, coco-captions:)")
    return TextData(list(keys), units, list(records))


class Texts:
    """The items' prompts and targets as padded id tensors, encoded once with the run's text tokenizer, in BLIP's
    convention (models/blip.py): targets without bos or end token, cut to fit the decoder's `max_len` positions
    with bos and end token (and the caption prompt, which is the decoder's prefix); VQA questions as they are."""

    def __init__(self, tokenizer, prompts: list[str], targets: list[str], max_len: int, family: str):
        from tokenforge.families.text import encode_batch

        if family == "captioning":
            width = max((len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in set(prompts)), default=0)
            target_len = max_len - 2 - width
        else:
            width, target_len = max_len, max_len - 2
        if target_len < 1:
            raise TokenforgeError(f"--text-max-len {max_len}: too short for the prompt ({width} ids) and one target id")
        self.prompt, self.prompt_mask = encode_batch(tokenizer, list(prompts), max(width, 1), add_bos=False, add_eos=False)
        self.target, self.target_mask = encode_batch(tokenizer, list(targets), target_len, add_bos=False, add_eos=False)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.prompt[index], self.prompt_mask[index], self.target[index], self.target_mask[index]


def flat(units: torch.Tensor) -> torch.Tensor:
    """Whole grids (B, h, w[, F]) as BLIP's stem takes them: (B, h*w[, F])."""
    return units.flatten(1, 2)


class Objective(torch.nn.Module):
    """What the DeepSpeed engine runs: BLIP's per-item target loss (B,) of units, positions and text."""

    def __init__(self, blip):
        super().__init__()
        self.blip = blip

    def forward(self, units, positions, prompt, prompt_mask, target, target_mask):
        return self.blip.loss(units, positions, prompt, prompt_mask, target, target_mask)


# --- training ------------------------------------------------------------------------------------------------


class TextLoop(TrainLoop):
    """The training loop (engine/loop.py) with a text loss: the current items' mean loss, plus the replayed memory
    rows' (as subsets of their kept tokens, with their own question and answer or caption)."""

    def __init__(self, engine, replay, units, texts: Texts, memory_texts: Texts | None, **kwargs):
        super().__init__(engine, None, replay, units, torch.arange(len(units)), **kwargs)
        self.texts, self.memory_texts = texts, memory_texts

    def step_loss(self, idx: torch.Tensor) -> torch.Tensor:
        units, positions = self.replay.current(self.units[idx])
        loss = self.objective(units if positions is not None else flat(units), positions, self.texts.rows(idx)).mean()
        memory = self.replay.sample(self.state.epoch, self.state.batch)
        if memory is not None:
            m_units, m_positions, rows = memory
            memory_loss = self.objective(m_units, m_positions, self.memory_texts.rows(rows)).mean()
            loss = self.joined(loss, len(idx), memory_loss, len(rows))
        return loss

    def objective(self, units, positions, text) -> torch.Tensor:
        d = self.device
        return self.engine(units.to(d), None if positions is None else positions.to(d), *(t.to(d) for t in text))


def check_args(args) -> None:
    if args.memory_method not in MM_METHODS:
        raise TokenforgeError(f"memory.method: {args.memory_method!r} is not offered for {args.family}; use one of {', '.join(MM_METHODS)}")
    if args.memory_scorer not in MM_SCORERS:
        raise TokenforgeError(f"memory.scorer: {args.memory_scorer!r} is not offered for {args.family}; use one of {', '.join(MM_SCORERS)}")
    if args.memory_replay_ratio <= 0:
        raise TokenforgeError(f"memory.replay_ratio: must be > 0, got {args.memory_replay_ratio}")
    if not 0 <= args.input_dropout <= 1:
        raise TokenforgeError(f"--input-dropout: must be in [0, 1], got {args.input_dropout}")
    if args.memory_view != "subset" or args.input_dropout_mode != "batch":
        raise TokenforgeError(f"memory.view/train.input_dropout_mode: {args.family} replays token subsets with batch input dropout only")
    if args.checkpoint_every < 1:
        raise TokenforgeError(f"--checkpoint-every: must be >= 1, got {args.checkpoint_every}")


def read_split(split_dir: Path, family_name: str, task: int) -> dict:
    split = read_json(split_dir / "tasks.json")
    if split.get("family", "classification") != family_name:
        raise TokenforgeError(f"{split_dir / 'tasks.json'}: a {split.get('family', 'classification')} split, not {family_name}")
    if not 0 <= task < len(split["tasks"]):
        raise TokenforgeError(f"--task {task}: the split has tasks 0..{len(split['tasks']) - 1}")
    return split


def initial_model(args, tok: dict, tokenizer):
    """Task t-1's BLIP for t > 0; for task 0 a seeded small BLIP (or a local pretrained one) on the tokenizer's grid."""
    from tokenforge.models.blip import BlipModel, BlipSettings, build_blip

    if args.task > 0:
        if args.previous is None:
            raise TokenforgeError(f"--previous: required for task {args.task} (task {args.task - 1}'s output)")
        model = BlipModel.load(args.previous)
        if model.settings.task != args.family or model.settings.input != args.input:
            raise TokenforgeError(f"--previous {args.previous}: a {model.settings.task} model on {model.settings.input}, not "
                                  f"{args.family} on {args.input}")  # fmt: skip
        return model
    from tokenforge.families.text import special_ids

    ids = special_ids(tokenizer)
    codebook = None
    if args.input == "tokens":
        from tokenforge.tokenizer.vq import load_codebook

        codebook = load_codebook(args.tokenizer)
    settings = BlipSettings(
        task=args.family, input=args.input, width=args.embed_dim, vision_layers=args.depth, text_layers=args.depth,
        heads=args.num_heads, mlp_ratio=args.mlp_ratio, vocab_size=len(tokenizer), pad_id=ids["pad"], bos_id=ids["bos"],
        eos_id=ids["eos"], sep_id=ids["eos"], max_text_len=args.text_max_len, grid=list(tok["grid"]),
        num_codes=int(codebook.shape[0]) if codebook is not None else 0, code_dim=int(codebook.shape[1]) if codebook is not None else 0,
        patch_features=tok["downsample"] ** 2 * tok["channels"], pretrained=str(args.pretrained) if args.pretrained else None,
    )  # fmt: skip
    if args.pretrained is not None:  # its text side expects its own tokenizer: multimodal.text_tokenizer
        return BlipModel.from_pretrained(args.pretrained, settings, codebook)
    return build_blip(settings, codebook, seed=args.seed)


def train_task(args, tracker) -> None:
    """Train task `args.task` of a VQA or captioning sequence; write model, memory (with text) and stats."""
    from tokenforge.families.text import load_text_tokenizer

    start = time.perf_counter()
    check_args(args)
    seed_everything(args.seed + args.task)
    split = read_split(args.split, args.family, args.task)
    family = families.get(args.family, by=split["by"], caption_prompt=split.get("caption_prompt", "a picture of"))
    tok = read_json(args.tokenizer / "config.json")
    tokenizer = load_text_tokenizer(args.split / "text")  # the split's: read once, for the model's ids and the text
    model = initial_model(args, tok, tokenizer)
    data = load_text_data(args.input, args.tokens, args.shards, "train", tok["downsample"])
    if tuple(data.units.shape[1:3]) != tuple(model.settings.grid):
        raise TokenforgeError(f"{args.tokens or args.shards}: grids of {data.units.shape[1:3]} do not match the model's {model.settings.grid}")
    source = args.tokens if args.input == "tokens" else args.shards
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "training", {"images": len(data.keys)})
    joint = args.memory_method == "joint"
    items = task_items(family, data.records, split, list(range(args.task + 1)) if joint else [args.task])
    if not len(items):
        raise TokenforgeError(f"{source}: no training items for task {args.task} ({', '.join(split['tasks'][args.task]['class_names'])})")
    keeps = args.memory_method in ("coreset", "coretokenset")
    memory = read_memory(args.previous / MEMORY_FILE) if args.task > 0 and keeps else Memory.empty()
    loop = make_loop(args, tracker, model, data, items, memory, tokenizer)
    state = loop.run()
    model = loop.engine.module.blip.cpu().eval()
    print(f"task {args.task}: building the memory", flush=True)
    if os.environ.get("TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"):  # tests: a window to kill the job in this phase
        time.sleep(float(os.environ["TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"]))
    t_memory = time.perf_counter()
    budget = resolve_budget(args.memory_budget, source.stat().st_size if args.tokens else None)
    layout = MemoryLayout(num_codes=(model.settings.num_codes or 256), num_positions=data.units.shape[1] * data.units.shape[2],
                          num_groups=split["num_classes"])  # fmt: skip
    if keeps:
        current = task_items(family, data.records, split, [args.task])
        memory = build_memory(model, memory, current, data, split, args, layout, budget, tokenizer)
    memory_s = time.perf_counter() - t_memory
    blob = serialize(memory, layout.num_codes, layout.num_positions, layout.num_groups)
    with atomic_dir(args.out) as tmp:
        model.save(tmp)
        # what the package bundle and `tokenforge evaluate` read: the family, the input and its patch (pixels)
        write_json(tmp / "model.json", {"family": args.family, "input": args.input, "patch": tok["downsample"],
                                        "grid": list(tok["grid"]), "architecture": "blip"})  # fmt: skip
        (tmp / MEMORY_FILE).write_bytes(blob)
        stats = {
            "task": args.task, "family": args.family, "groups": split["tasks"][args.task]["class_names"],
            "train_items": len(items), "steps": state.step, "final_loss": state.epoch_loss, "samples_per_s": state.rate,
            "memory_bytes": len(blob), "memory_samples": len(memory), "memory_tokens_per_sample": memory.tokens_per_sample,
            "memory_method": args.memory_method, "memory_scorer": args.memory_scorer, "memory_budget_bytes": budget,
            "memory_build_s": memory_s, "memory_sha256": hashlib.sha256(blob).hexdigest(), "peak_rss_mb": max_rss_mb(),
            "device": str(loop.device), "wall_s": time.perf_counter() - start,
        }  # fmt: skip
        write_json(tmp / "stats.json", stats)
    if loop.checkpointer is not None:
        loop.checkpointer.clear()
    tracker.log_metrics({k: stats[k] for k in ("final_loss", "memory_bytes", "memory_samples", "memory_build_s")})
    tracker.log_artifact(args.out / "stats.json")
    print(f"task {args.task}: loss {state.epoch_loss:.3f}, memory {len(memory)} items x {memory.tokens_per_sample} tokens "
          f"= {len(blob)} bytes")  # fmt: skip


def make_loop(args, tracker, model, data: TextData, items: Items, memory: Memory, tokenizer) -> TextLoop:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        raise TokenforgeError(f"{args.family}: one training process only for now (WORLD_SIZE {world})")
    units = torch.from_numpy(data.units[np.asarray(items.image, dtype=np.int64)])
    texts = Texts(tokenizer, items.prompt, items.target, args.text_max_len, args.family)
    memory_texts = Texts(tokenizer, memory.extra["prompt"], memory.extra["target"], args.text_max_len, args.family) if len(memory) else None
    local = rank_slice(len(units), rank, world)
    generator = torch.Generator().manual_seed(args.seed * 1000 + args.task)
    steps = max(1, -(-len(local) // args.batch_size))
    grid = tuple(data.units.shape[1:3])
    indexed = Memory(memory.keys, np.arange(len(memory), dtype=np.int64), memory.tasks, memory.positions, memory.ids)
    config = ReplayConfig(batch=max(1, int(round(args.memory_replay_ratio * args.batch_size))), keep=memory.tokens_per_sample,
                          grid=grid, input_dropout=args.input_dropout, schedule=args.memory_schedule, steps_per_epoch=steps,
                          seed=args.seed * 1000 + args.task)  # fmt: skip
    replay = Replay(indexed, config, generator)
    engine = build_engine(Objective(model), args, steps * args.epochs)
    callbacks = [ProgressBar(args.task), Tracking(tracker, args.log_every)]
    ckpt = Checkpointer(args.checkpoint_dir, args.checkpoint_every, fingerprint(args), rank) if args.checkpoint_dir else None
    if ckpt is not None:
        callbacks.insert(0, Checkpointing(ckpt, args.task))
    loop = TextLoop(engine, replay, units, texts, memory_texts, local=local, epochs=args.epochs, batch_size=args.batch_size,
                    generator=generator, callbacks=callbacks)  # fmt: skip
    loop.checkpointer = ckpt
    return loop


# --- memory --------------------------------------------------------------------------------------------------


@dataclass
class MemoryLayout:
    num_codes: int  # bounds of the stored values (256 for pixel patches)
    num_positions: int
    num_groups: int


def _rows(items: Items, order: np.ndarray, data: TextData, positions: np.ndarray, task: int, group_index: dict) -> Memory:
    """Memory rows of items `order` keeping `positions` (n, k) of their images' units."""
    image = np.asarray(items.image, dtype=np.int64)[order]
    ids = kept_units(data.units[image], positions) if len(order) else np.zeros((0, positions.shape[1]), np.int64)
    return Memory(
        [f"{data.keys[i]}#{j}" for i, j in zip(image, order)],
        np.asarray([group_index[items.group[j]] for j in order], dtype=np.int64),
        np.full(len(order), task, dtype=np.int64),
        positions.astype(np.int64),
        ids,
        {"prompt": [items.prompt[j] for j in order], "target": [items.target[j] for j in order]},
    )


def _by_task(memory: Memory, n: int) -> Memory:
    """The first n rows of every task in the memory (rows are stored in each task's draw order)."""
    keep = [i for t in np.unique(memory.tasks) for i in np.flatnonzero(memory.tasks == t)[:n]]
    return memory.rows(np.asarray(keep, dtype=np.int64))


def build_memory(model, previous: Memory, items: Items, data: TextData, split: dict, args, layout: MemoryLayout,
                 budget: int | None, tokenizer) -> Memory:  # fmt: skip
    """The memory of tasks 0..t: the previous one and this task's items, the same row count per task, in budget."""
    n_units = layout.num_positions
    k = n_units if args.memory_method == "coreset" else keep_count(n_units, args.memory_token_fraction)
    group_index = {g: i for t in split["tasks"] for i, g in zip(t["classes"], t["class_names"])}
    order = np.random.default_rng(args.seed * 1000 + args.task).permutation(len(items))
    cap = len(items) if args.memory_samples_per_class is None else min(len(items), args.memory_samples_per_class)
    if budget is None and args.memory_samples_per_class is None:
        raise TokenforgeError(f"memory.budget: method {args.memory_method!r} needs a budget or memory.samples_per_class")
    spread = np.random.default_rng(0)  # sizing proxy: scattered positions compress like chosen ones

    def proxy(n: int) -> Memory:
        pos = np.sort(np.stack([spread.permutation(n_units)[:k] for _ in range(n)]), 1) if n else np.zeros((0, k), np.int64)
        return _by_task(previous, n).concat(_rows(items, order[:n], data, pos, args.task, group_index))

    def fits(memory: Memory) -> bool:
        return budget is None or len(serialize(memory, layout.num_codes, layout.num_positions, layout.num_groups)) <= budget

    lo, hi = 0, cap  # the largest per-task row count whose memory fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(proxy(mid)) else (lo, mid - 1)
    n = lo
    while True:
        chosen = order[:n]
        positions = choose_tokens(model, items, chosen, data, k, args, tokenizer)
        memory = _by_task(previous, n).concat(_rows(items, chosen, data, positions, args.task, group_index))
        if fits(memory) or n == 0:
            return memory
        n -= 1


def choose_tokens(model, items: Items, chosen: np.ndarray, data: TextData, k: int, args, tokenizer) -> np.ndarray:
    """The kept positions (n, k) of each chosen item, ascending: all of them (coreset), or its top k by relevance."""
    n_units = data.units.shape[1] * data.units.shape[2]
    if k == n_units:
        return np.tile(np.arange(n_units, dtype=np.int64), (len(chosen), 1))
    texts = Texts(tokenizer, [items.prompt[j] for j in chosen], [items.target[j] for j in chosen], args.text_max_len, args.family)
    units = torch.from_numpy(data.units[np.asarray(items.image, dtype=np.int64)[chosen]])
    generator = torch.Generator().manual_seed(args.seed * 1000 + args.task + 7)
    out = []
    batch = 16 if args.memory_scorer == "atman" else 64
    for i in progress(range(0, len(chosen), batch), desc=f"score tokens ({args.memory_scorer})", unit="batch"):
        index = torch.arange(i, min(i + batch, len(chosen)))
        scores = model.relevance(flat(units[index]), None, *texts.rows(index), method=args.memory_scorer, generator=generator)
        top = scores.float().topk(k, dim=1).indices.sort(1).values
        out.append(top.cpu().numpy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, k), np.int64)


# --- evaluation ----------------------------------------------------------------------------------------------


def generate(model, units: np.ndarray, texts: Texts, tokenizer, batch_size: int, max_new_tokens: int) -> list[str]:
    from tokenforge.families.text import decode

    device = compute_device()
    out: list[str] = []
    with torch.no_grad():
        for i in range(0, len(units), batch_size):
            index = torch.arange(i, min(i + batch_size, len(units)))
            prompt, prompt_mask, _, _ = texts.rows(index)
            ids = model.generate(flat(torch.from_numpy(units[i : i + batch_size])).to(device), None, prompt.to(device),
                                 prompt_mask.to(device), max_new_tokens=max_new_tokens)  # fmt: skip
            out.extend(decode(tokenizer, ids.cpu()))
    return out


def evaluate_row(args, tracker) -> dict:
    """Row `args.task` of the score matrices: every task's test items, answered or captioned by greedy decoding."""
    from tokenforge.families.text import load_text_tokenizer
    from tokenforge.models.blip import BlipModel

    split = read_split(args.split, args.family, args.task)
    family = families.get(args.family, by=split["by"], caption_prompt=split.get("caption_prompt", "a picture of"))
    model = BlipModel.load(args.model).to(compute_device()).eval()
    if model.settings.task != args.family:
        raise TokenforgeError(f"--model {args.model}: a {model.settings.task} model, not {args.family}")
    tokenizer = load_text_tokenizer(args.split / "text")
    patch = int(read_json(args.model / "model.json")["patch"])
    data = load_text_data(model.settings.input, args.tokens, args.shards, "test", patch)
    source = args.tokens if model.settings.input == "tokens" else args.shards
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "evaluation", {"images": len(data.keys)})
    scores: dict[str, list[float]] = {}
    counts, examples = [], []
    for t in range(len(split["tasks"])):
        items = task_items(family, data.records, split, [t], evaluation=True)
        if not len(items):
            raise TokenforgeError(f"{source}: no test items for task {t} ({', '.join(split['tasks'][t]['class_names'])})")
        texts = Texts(tokenizer, items.prompt, items.target, model.settings.max_text_len, args.family)
        units = data.units[np.asarray(items.image, dtype=np.int64)]
        # the decoder's positions: bos, the caption prompt, then what is generated (the end token included)
        limit = model.settings.max_text_len - 1 - (texts.prompt.shape[1] if args.family == "captioning" else 0)
        predictions = generate(model, units, texts, tokenizer, args.batch_size, min(args.generate_tokens or limit, limit))
        for name, value in family.score(predictions, items).items():
            scores.setdefault(name, []).append(float(value))
        counts.append(len(items))
        examples.append([{"prompt": items.prompt[i], "prediction": predictions[i], "references": items.references[i][:3]}
                         for i in range(min(3, len(items)))])  # fmt: skip
    primary = scores[family.metric]
    return {"task": args.task, "family": args.family, "metric": family.metric, "accuracy": primary, "scores": scores,
            "num_test": counts, "groups": [t["class_names"] for t in split["tasks"]],
            "average_accuracy": float(np.mean(primary[: args.task + 1])),
            "average_scores": {k: float(np.mean(v[: args.task + 1])) for k, v in scores.items()}, "examples": examples}  # fmt: skip
