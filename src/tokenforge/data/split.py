"""The class-incremental task sequence: the class order (`resolve_order`: shuffled by seed, or given as class
names or labels) and the tasks it is cut into (`make_tasks`). The stage that writes the manifests:
tokenforge/cli/split.py.
"""

from __future__ import annotations

import numpy as np

from tokenforge.errors import TokenforgeError


def resolve_order(class_names: list[str], order: list[str] | None, seed: int) -> list[int]:
    """Labels in task order: the explicit order (names or label numbers) or a seeded shuffle."""
    if order is None:
        return [int(c) for c in np.random.default_rng(seed).permutation(len(class_names))]
    by_name = {name: i for i, name in enumerate(class_names)}
    labels = []
    for item in order:
        item = str(item)
        if item in by_name:
            label = by_name[item]
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(class_names):
            label = int(item)
        else:
            raise TokenforgeError(f"split.order: unknown class {item!r}; known: {', '.join(class_names[:20])}")
        if label in labels:
            raise TokenforgeError(f"split.order: class {item!r} is listed more than once")
        labels.append(label)
    return labels


def make_tasks(class_names: list[str], tasks: int, classes_per_task: int | None, order: list[int]) -> list[list[int]]:
    if tasks < 1:
        raise TokenforgeError(f"split.tasks: must be at least 1, got {tasks}")
    per_task = classes_per_task or len(order) // tasks
    if per_task < 1 or per_task * tasks > len(order):
        raise TokenforgeError(
            f"split: {tasks} tasks x {per_task} classes need {max(per_task, 1) * tasks} classes, "
            f"but {len(order)} are available"
        )
    return [order[t * per_task : (t + 1) * per_task] for t in range(tasks)]


