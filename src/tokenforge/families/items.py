"""Items, the unit of training, evaluation and memory of the text families (families/multimodal.py): an image's
question with its answer, or its caption, with the group that picks its task; `task_items` reads them for the tasks
of a split manifest (tasks.json) through the family's `items`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tokenforge.errors import TokenforgeError


@dataclass
class Items:
    """Columns of a set of items: image = row of the token set; group = the value that picks its task."""

    image: list[int] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    group: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image)

    def add(self, image: int, prompt: str, target: str, references: list[str], group: str) -> None:
        self.image.append(image)
        self.prompt.append(prompt)
        self.target.append(target)
        self.references.append(references)
        self.group.append(group)


def training_answer(answers: list[str]) -> str:
    """The answer a VQA item is trained on: the most frequent (VQA v2's multiple-choice answer), first on ties."""
    if not answers:
        raise TokenforgeError("a question has no answers")
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def task_items(family, records: list[dict], split: dict, tasks: list[int], *, evaluation: bool = False) -> Items:
    """The items of the listed tasks of a split manifest (tasks.json)."""
    groups = [g for t in tasks for g in split["tasks"][t]["class_names"]]
    every = [t["class_names"] for t in split["tasks"]]  # captioning's assignment of images to tasks needs them all
    return family.items(records, groups, evaluation=evaluation, tasks=every)
