"""The text families' side of one task's training job (vqa, captioning; the `TaskJob` of engine/job.py, run by the
shared trainer engine/train.py): the task's items (a question, a caption) on their images' units, BLIP (families/
text_start.py) trained on the per-item text loss in `TextLoop` (families/text_data.py), replaying memory rows as
token subsets with their own text, and after training the memory of items (families/text_memory.py).

Memory (`memory.method`): `coreset` keeps whole token grids of items, `coretokenset` each item's top
`token_fraction` of tokens by relevance for its target (`memory.scorer`: atman or gradient, random as the control);
`none` is fine-tuning and `joint` trains on every task so far (no memory: the upper bound). Replay is of token
subsets with batch input dropout only.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenforge.continual.memory import MEMORY_FILE, Memory, read_memory
from tokenforge.continual.methods import memory_method
from tokenforge.continual.policy import Policy, resolve_budget
from tokenforge.continual.replay import Replay, ReplayConfig
from tokenforge.continual.scorers import scorer_for
from tokenforge.continual.selection import selection_for
from tokenforge.engine.deepspeed import build_engine
from tokenforge.engine.job import Task, TaskJob, callbacks, check_common, rank_and_world
from tokenforge.engine.loop import rank_slice
from tokenforge.errors import TokenforgeError
from tokenforge.families.items import task_items
from tokenforge.families.text_data import Objective, TextLoop, Texts, load_text_data
from tokenforge.families.text_memory import TextMemory
from tokenforge.io import read_json, write_json
from tokenforge.runtime import task_seed


def check_args(args) -> None:
    memory_method(args.memory_method, args.family)  # one-line errors for what this family is not offered
    scorer_for(args.memory_scorer, args.family)
    selection_for(args.memory_selection, args.family)  # herding and gradient read the ViT's features
    check_common(args)
    if args.memory_view != "subset" or args.input_dropout_mode != "batch":
        raise TokenforgeError(f"memory.view/train.input_dropout_mode: {args.family} replays token subsets with batch input dropout only")


class TextJob(TaskJob):
    """One task of a VQA or captioning sequence on BLIP (module doc; engine/job.py the interface)."""

    def check(self, args) -> None:
        check_args(args)

    def prepare(self) -> None:
        from tokenforge.families.text import load_text_tokenizer
        from tokenforge.families.text_start import initial_model

        args = self.args
        self.task = task = Task.read(args.split, args.task, args.family)
        split = task.manifest
        self.family = self.family_class(by=split["by"], caption_prompt=split.get("caption_prompt", "a picture of"))
        self.tok = read_json(args.tokenizer / "config.json")
        self.tokenizer = load_text_tokenizer(args.split / "text")  # the split's: read once, for the model's ids and the text
        self.model = initial_model(args, self.tok, self.tokenizer)
        self.data = data = load_text_data(args.input, args.tokens, args.shards, "train", self.tok["downsample"])
        if tuple(data.units.shape[1:3]) != tuple(self.model.settings.grid):
            raise TokenforgeError(f"{args.tokens or args.shards}: grids of {data.units.shape[1:3]} do not match the model's {self.model.settings.grid}")
        source = args.tokens if args.input == "tokens" else args.shards
        self.tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "training", {"images": len(data.keys)})
        self.policy = self.memory_policy()
        trained_on = list(range(args.task + 1)) if self.policy.trains_on_seen else [args.task]
        self.items = task_items(self.family, data.records, split, trained_on)
        if not len(self.items):
            raise TokenforgeError(f"{source}: no training items for task {args.task} ({', '.join(split['tasks'][args.task]['class_names'])})")
        keeps = args.task > 0 and self.policy.keeps_memory
        self.memory = read_memory(args.previous / MEMORY_FILE) if keeps else Memory.empty()

    def memory_policy(self) -> Policy:
        """The buffer policy of the `--memory-*` flags; labels are groups, rows hold the grid's units."""
        args, settings = self.args, self.model.settings
        return Policy(
            method=args.memory_method, selection=args.memory_selection, scorer=args.memory_scorer,
            token_fraction=args.memory_token_fraction, samples_per_class=args.memory_samples_per_class,
            budget=resolve_budget(args.memory_budget, args.tokens.stat().st_size if args.tokens else None),
            num_codes=settings.num_codes or 256, num_positions=settings.units, num_classes=self.task.num_classes,
        )  # fmt: skip

    def make_loop(self) -> TextLoop:
        args, data, items, memory = self.args, self.data, self.items, self.memory
        rank, world = rank_and_world()
        units = torch.from_numpy(data.units[np.asarray(items.image, dtype=np.int64)])
        prefix = self.family.prompt_is_prefix
        texts = Texts(self.tokenizer, items.prompt, items.target, args.text_max_len, prefix)
        memory_texts = Texts(self.tokenizer, memory.extra["prompt"], memory.extra["target"], args.text_max_len, prefix) if len(memory) else None
        local = rank_slice(len(units), rank, world)
        generator = torch.Generator().manual_seed(task_seed(args.seed, args.task))
        steps = max(1, -(-len(local) // args.batch_size))
        # the replay hands back row numbers in place of labels: the loop reads each row's text by them
        indexed = Memory(memory.keys, np.arange(len(memory), dtype=np.int64), memory.tasks, memory.positions, memory.ids)
        config = ReplayConfig(batch=max(1, int(round(args.memory_replay_ratio * args.batch_size))), keep=memory.tokens_per_sample,
                              grid=tuple(data.units.shape[1:3]), input_dropout=args.input_dropout, schedule=args.memory_schedule,
                              steps_per_epoch=steps, seed=task_seed(args.seed, args.task))  # fmt: skip
        replay = Replay(indexed, config, generator)
        engine = build_engine(Objective(self.model), args, steps * args.epochs)
        found, ckpt = callbacks(args, self.tracker, rank)
        loop = TextLoop(engine, replay, units, texts, memory_texts, local=local, epochs=args.epochs, batch_size=args.batch_size,
                        generator=generator, callbacks=found)  # fmt: skip
        loop.checkpointer = ckpt  # removed once the outputs are written
        return loop

    def trained(self, loop: TextLoop):
        return loop.engine.module.blip.cpu().eval()

    def build_memory(self, model) -> tuple[Memory, dict]:
        args, split = self.args, self.task.manifest
        current = task_items(self.family, self.data.records, split, [args.task])
        group_index = {g: i for t in split["tasks"] for i, g in zip(t["classes"], t["class_names"])}
        labels = np.asarray([group_index[g] for g in current.group], dtype=np.int64)
        builder = TextMemory(self.policy, self.family, self.tokenizer, args.text_max_len, task_seed(args.seed, args.task))
        return builder.build(model, self.memory, current, labels, self.data, args.task, self.task.seen)

    def save(self, model, folder) -> None:
        model.save(folder)
        # what the package bundle and `tokenforge evaluate` read: the family, the input and its patch (pixels)
        write_json(folder / "model.json", {"family": self.args.family, "input": self.args.input, "patch": self.tok["downsample"],
                                           "grid": list(self.tok["grid"]), "architecture": "blip"})  # fmt: skip

    def stats(self, state) -> dict:
        groups = self.task.manifest["tasks"][self.args.task]["class_names"]
        return {"family": self.args.family, "groups": groups, "train_items": len(self.items)}
