"""Task families: the part of splitting, training and evaluation that depends on what is learnt.

One registry, `FAMILIES`, maps a family's name (`family:` in the config, `--family` of `tokenforge split`, `train`,
`evaluate`) to its class. Built in: `classification` (the ViT on class labels, families/classification.py) and the
multimodal `vqa` and `captioning` (BLIP on text targets, families/multimodal.py). A new family is one module with a
class that has the hooks below, plus one registration (`FAMILIES.register("name", "module:Class")` here, or an
installed package's entry point in the group `tokenforge.families`, or `--family mylab.fam:MyFamily`); the stages
and the shared trainer (engine/train.py) never branch on a family's name.

What a family supplies, and who calls it:

    Family.split(args) -> SplitPlan          `tokenforge split`: the names the task sequence is cut from (class
                                             names, question families, objects), extra tasks.json fields, extra files
    Family.training_job(args, tracker)       `tokenforge train`: the family's side of one task's training job, a
                                             `engine.job.TaskJob` (data, model, targets and loss in its loop, memory
                                             rows and their relevance, the model's files); engine/train.py runs it and
                                             owns the loop, the budget fit, the ranks' agreement and the outputs
    Family.evaluate(args, tracker) -> (row, scores)   `tokenforge evaluate`: one row of the score matrices (written
                                             as JSON) and {score name: (per-task values, average)} for MLflow
    Family.sequence_mask(manifest, labels)   `tokenforge pretrain --data heldout/tasks`: which training samples belong
                                             to the sequence's classes, or None where the split is not by the units'
                                             labels (the text families: every image may serve the sequence)

and `Family.reads_text`: whether the pipeline gives the family the text beside the images (the split reads the token
file's text and trains a text tokenizer, training takes --text-max-len; vqa and captioning) or class names
(classification, and a family of one's own unless it says otherwise). The Snakefile reads it, so a family's module
should import torch only where a job uses it.

and, on the object `families.get(name, **kwargs)` builds for one job (the trainer's loop and the evaluation use it):

    family.name            the family's name
    family.memory_columns  names of the extra columns a memory row carries (`Memory.extra`) beyond key, label, task,
                           positions and ids, stored in the same file (classification: none; vqa/captioning: the
                           item's prompt and target)
    classification:  targets(labels), restrict(outputs), loss(outputs, targets), correct(outputs, labels),
                     predict(outputs) (families/classification.py)
    vqa, captioning: groups(records), items(records, groups), texts(records), score(predictions, items, records),
                     metric (the headline score), prompt_is_prefix (a caption prompt starts the decoder's text; a
                     question does not) (families/multimodal.py)

This module imports nothing heavy: the CLI's `--help` lists the families from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tokenforge.plugins import Registry

HOOKS = ("split", "training_job", "evaluate", "sequence_mask")


def family_check(obj: object) -> str | None:
    """A family is a class with the stage hooks (module doc)."""
    if not isinstance(obj, type):
        return f"a {type(obj).__name__}, not a class"
    missing = [hook for hook in HOOKS if not callable(getattr(obj, hook, None))]
    return f"a class without {', '.join(missing)}" if missing else None


# what the tasks learn: class labels, or text targets on BLIP
FAMILIES = Registry("family", key="family", group="tokenforge.families", check=family_check)
FAMILIES.register("classification", "tokenforge.families.classification:Classification")
FAMILIES.register("vqa", "tokenforge.families.multimodal:VQA")
FAMILIES.register("captioning", "tokenforge.families.multimodal:Captioning")


@dataclass
class SplitPlan:
    """What a family gives `tokenforge split`: the names cut into tasks (a task's "classes" index them), fields
    tasks.json carries beside num_classes and tasks, parameters for MLflow, and extra files written with the
    manifests (`write(folder)`, e.g. the text tokenizer)."""

    names: list[str]
    fields: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    write: Callable[[Any], None] | None = None
    logged_by_name: bool = False  # MLflow's "order" param: names (True) or label numbers
    per_task_metric: str = "classes_per_task"


def get(name: str, **kwargs):
    """The family `name` (a registered name, an installed plugin's, or an import path), built for this job:
    `num_classes`, `seen` for classification; `by`, `caption_prompt` for vqa and captioning."""
    return FAMILIES.load(name)(**kwargs)
