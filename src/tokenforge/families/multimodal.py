"""The multimodal families: sequential visual question answering (`vqa`) and captioning (`captioning`).

An image's text record (tokenforge.data.multimodal: `{"dataset", "qa": [{"question", "answers", "family"}],
"captions", "objects"}`) travels with its token grid. A family turns records into *items*, the unit of training,
evaluation and memory:

- VQA: one item per question. prompt = the question, target = the most frequent of its answers (the training
  answer; ties go to the first given), references = all its answers (VQA v2's ten, one for CLEVR and scenes).
  Its group, which decides its task, is the question family (`split.by: family`: colour, count, ...) or the
  dataset (`by: dataset`: VQA v2 -> CLEVR, as the paper's sequence).
- Captioning: training has one item per caption (prompt = `caption_prompt`, "a picture of" as BLIP's, target =
  the caption); evaluation one per image, references = all its captions. Its group is an object (`by: object`):
  tasks hold images that show their objects, as the paper splits COCO by object. An image showing objects of
  several tasks goes to the one of them with the fewest images so far (in key order), so tasks are disjoint and
  about balanced.

The score of a task: VQA accuracy (the official score with ten answers, exact match otherwise); captioning CIDEr-D,
with BLEU-4 beside it, and where the images' records have scene layouts (the `scenes` source) the shares of their
objects the captions name, by colour and shape and by shape alone (object_recall, shape_recall), and of their
images whose caption states the right number of objects (count_accuracy; tokenforge.report.text_metrics). A
memory row carries its item's prompt and target as the extra columns `prompt` and `target`, counted in the
memory's bytes on disk.

The stage hooks (families/__init__.py): `split` cuts the groups of the train token file's text into tasks and
writes the text tokenizer (`text/`); `training_job` is BLIP's job (families/text_job.py); `evaluate` greedy-decodes
every task's test items (families/text_eval.py).
"""

from __future__ import annotations

from collections import Counter

from tokenforge.errors import TokenforgeError
from tokenforge.families.items import Items, task_items, training_answer

__all__ = ["CAPTION_PROMPT", "SPLIT_BY", "VQA", "Captioning", "Items", "task_items", "training_answer"]

SPLIT_BY = {"vqa": ("family", "dataset"), "captioning": ("object",)}
CAPTION_PROMPT = "a picture of"


class _Multimodal:
    name = ""
    memory_columns: tuple[str, ...] = ("prompt", "target")
    metric = ""  # the headline score of a task: the matrix the package reports
    prompt_is_prefix = False  # the prompt starts the decoder's text (a caption prompt), or is a question apart from it
    reads_text = True  # the split and training read the text records beside the images (families/__init__.py)

    def __init__(self, by: str, caption_prompt: str = CAPTION_PROMPT):
        if by not in SPLIT_BY[self.name]:
            raise TokenforgeError(f"split.by: {by!r} does not split a {self.name} sequence; use one of {', '.join(SPLIT_BY[self.name])}")
        self.by, self.caption_prompt = by, caption_prompt

    def groups(self, records: list[dict]) -> list[str]:
        """Every group value in these records, most frequent first (ties by name): the candidates for tasks."""
        counts = Counter(self._record_groups(records))
        if not counts:
            raise TokenforgeError(f"no {self.by} values in the data's text: nothing to split a {self.name} sequence by")
        return sorted(counts, key=lambda g: (-counts[g], g))

    def texts(self, records: list[dict]) -> list[str]:
        """The text a word-level tokenizer is trained on."""
        raise NotImplementedError

    def _record_groups(self, records):
        raise NotImplementedError

    # --- stage hooks (families/__init__.py) ------------------------------------------------------------------
    @classmethod
    def split(cls, args):
        """The groups of the train token file's text (--tokens, split by --by), and the text tokenizer to write."""
        from tokenforge.data.tokens import load_tokens
        from tokenforge.families import SplitPlan
        from tokenforge.families.text import load_text_tokenizer, train_word_tokenizer

        if args.tokens is None:
            raise TokenforgeError(f"--tokens: required for {cls.name} (the train token file with its text)")
        by = args.by or SPLIT_BY[cls.name][0]
        family = cls(by=by, caption_prompt=args.caption_prompt)
        records = load_tokens(args.tokens).texts
        if records is None:
            raise TokenforgeError(f"{args.tokens}: no text column; shard a text source (scenes, vqa2:, clevr:, coco-captions:)")

        def write(folder) -> None:  # every later job's text tokenizer: trained on all tasks' text, or the given one
            if args.text_tokenizer is not None:
                load_text_tokenizer(args.text_tokenizer).save_pretrained(folder / "text")
            else:
                train_word_tokenizer(family.texts(records), folder / "text")

        fields = {"family": cls.name, "by": by, "caption_prompt": args.caption_prompt}
        return SplitPlan(family.groups(records), fields, {"by": by}, write, logged_by_name=True, per_task_metric="groups_per_task")

    @classmethod
    def training_job(cls, args, tracker):
        from tokenforge.families.text_job import TextJob

        return TextJob(cls, args, tracker)

    @classmethod
    def evaluate(cls, args, tracker):
        from tokenforge.families.text_eval import evaluate_row

        return evaluate_row(cls, args, tracker)

    @classmethod
    def sequence_mask(cls, manifest, labels):
        """None: a split by text groups is not by the units' labels, and every image may serve the sequence."""
        return None


class VQA(_Multimodal):
    name = "vqa"
    metric = "vqa_accuracy"

    def _record_groups(self, records):
        for r in records:
            for qa in r.get("qa", []):
                yield qa["family"] if self.by == "family" else r["dataset"]

    def texts(self, records):
        for r in records:
            for qa in r.get("qa", []):
                yield qa["question"]
                yield from qa["answers"]

    def items(self, records: list[dict], groups, *, evaluation: bool = False, tasks: list[list[str]] | None = None) -> Items:
        """The questions of `records` whose group is in `groups` (all when None); a question's own group picks its task,
        so `tasks` (every task's groups) is not needed."""
        keep = None if groups is None else set(groups)
        out = Items()
        for i, r in enumerate(records):
            for qa in r.get("qa", []):
                group = qa["family"] if self.by == "family" else r["dataset"]
                if keep is None or group in keep:
                    out.add(i, qa["question"], training_answer(qa["answers"]), list(qa["answers"]), group)
        return out

    def score(self, predictions: list[str], items: Items, records: list[dict] | None = None) -> dict[str, float]:
        """VQA accuracy of the predicted answers; `records` (the evaluated records) is not needed."""
        from tokenforge.report.text_metrics import vqa_accuracy

        return {"vqa_accuracy": vqa_accuracy(predictions, items.references)}


class Captioning(_Multimodal):
    name = "captioning"
    metric = "cider"
    headline_is_share = False  # CIDEr-D is a plain number, not a fraction: `tokenforge compare` shows it as one
    prompt_is_prefix = True

    def _record_groups(self, records):
        for r in records:
            yield from set(r.get("objects", []))

    def texts(self, records):
        yield self.caption_prompt
        for r in records:
            yield from r.get("captions", [])

    def assign(self, records: list[dict], tasks: list[list[str]]) -> list[int | None]:
        """The task of each image: the task of one of its objects with the fewest images so far; None: no task's."""
        of_object = {g: t for t, groups in enumerate(tasks) for g in groups}
        sizes = [0] * len(tasks)
        out: list[int | None] = []
        for r in records:
            candidates = sorted({of_object[o] for o in r.get("objects", []) if o in of_object})
            if not candidates or not r.get("captions"):
                out.append(None)
                continue
            t = min(candidates, key=lambda c: (sizes[c], c))
            sizes[t] += 1
            out.append(t)
        return out

    def items(self, records: list[dict], groups, *, evaluation: bool = False, tasks: list[list[str]] | None = None) -> Items:
        """Training: one item per caption; evaluation: one per image with all captions as references. `tasks`: every
        task's objects (the assignment needs them all); `groups`: the objects of the tasks wanted."""
        tasks = tasks if tasks is not None else [[g] for g in (groups or self.groups(records))]
        assigned = self.assign(records, tasks)
        keep = None if groups is None else set(groups)
        out = Items()
        for i, (r, t) in enumerate(zip(records, assigned)):
            if t is None:
                continue
            group = tasks[t][0]
            if keep is not None and not keep.intersection(tasks[t]):
                continue
            captions = list(r["captions"])
            if evaluation:
                out.add(i, self.caption_prompt, captions[0], captions, group)
            else:
                for caption in captions:
                    out.add(i, self.caption_prompt, caption, captions, group)
        return out

    def score(self, predictions: list[str], items: Items, records: list[dict] | None = None) -> dict[str, float]:
        """CIDEr-D and BLEU-4; with `records` (those `items.image` indexes) that have scene layouts also
        object_recall and shape_recall over their objects and count_accuracy over their images
        (text_metrics.object_mention_recall)."""
        from tokenforge.report.text_metrics import caption_scores, object_mention_recall

        scores = caption_scores(predictions, items.references)
        if records is not None:
            scores.update(object_mention_recall(predictions, [(records[i] or {}).get("scene") for i in items.image]))
        return scores
