"""Task families: the part of training and evaluation that depends on what is learnt.

A family says what a batch's targets are, the loss, the prediction and its score, and which extra columns
a memory row carries. The training loop (engine/loop.py), evaluation (engine/evaluate.py) and the memory
(continual/) call only this interface, so a new family (VQA, captioning) plugs in here without
rewriting them. Classification (`families/classification.py`) is the ViT's; the multimodal families `vqa` and
`captioning` (`families/multimodal.py`) train BLIP on text targets through their own loop (engine/multimodal.py),
with items (a question, a caption) in place of labels: `items`, `score` and `memory_columns` are theirs.

The interface, as the trainer uses it (`family = families.get("classification", num_classes=..., seen=...)`):

    family.name            the family's name (`family:` in a future config)
    family.memory_columns  names of the extra columns a memory row carries (`Memory.extra`) beyond key, label,
                           task, positions and ids, stored in the same file
                           (classification: none; VQA would add the question and answer)
    family.targets(labels)         training targets of a current-task batch (B, ...); augmentations
                                   such as CutMix may mix them, so they are soft where needed
    family.restrict(outputs)       the model's outputs limited to what may be predicted so far
                                   (classification: the classes seen so far)
    family.loss(outputs, targets)  the training loss of restricted outputs; targets are those of
                                   `targets()` or a memory row's own (its label)
    family.correct(outputs, labels)  how many restricted outputs are right (train accuracy)
    family.predict(outputs)        predictions from raw outputs (restricted first)

Each is a method on a small object built once per job for the task being trained or evaluated.
"""

from __future__ import annotations

from tokenforge.errors import TokenforgeError

FAMILIES = ("classification", "vqa", "captioning")
MULTIMODAL = ("vqa", "captioning")


def get(name: str, **kwargs):
    """The family `name`, built for this job (`num_classes`, `seen` for classification; `by`, `caption_prompt` for
    the multimodal ones)."""
    if name == "classification":
        from tokenforge.families.classification import Classification

        return Classification(**kwargs)
    if name in MULTIMODAL:
        from tokenforge.families.multimodal import VQA, Captioning

        return (VQA if name == "vqa" else Captioning)(**kwargs)
    raise TokenforgeError(f"family: unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
