"""One evaluation row of the text families (vqa, captioning): every task's test items, answered or captioned by
BLIP's greedy decoding and scored by the family (VQA accuracy; CIDEr-D with BLEU-4, and object and shape recall where
the images have scene layouts), one row of each score matrix. A score that only some tasks have is left out of the row.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.families.items import task_items
from tokenforge.families.text_data import Texts, flat, load_text_data
from tokenforge.io import read_json
from tokenforge.runtime import compute_device


def generate(model, units: np.ndarray, texts: Texts, tokenizer, batch_size: int, max_new_tokens: int) -> list[str]:
    """The decoded predictions for the items of `units` and `texts`, in batches on the model's device."""
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


def evaluate_row(family_class, args, tracker) -> tuple[dict, dict]:
    """Row `args.task` of the score matrices and {score: (per-task values, average over tasks 0..t)}."""
    from tokenforge.engine.job import Task
    from tokenforge.families.text import load_text_tokenizer
    from tokenforge.models.blip import BlipModel

    split = Task.read(args.split, args.task, args.family).manifest
    family = family_class(by=split["by"], caption_prompt=split.get("caption_prompt", "a picture of"))
    model = BlipModel.load(args.model).to(compute_device()).eval()
    if model.settings.task != args.family:
        raise TokenforgeError(f"--model {args.model}: a {model.settings.task} model, not {args.family}")
    tokenizer = load_text_tokenizer(args.split / "text")
    patch = int(read_json(args.model / "model.json")["patch"])
    data = load_text_data(model.settings.input, args.tokens, args.shards, "test", patch)
    source = args.tokens if model.settings.input == "tokens" else args.shards
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "evaluation", {"images": len(data.keys)})
    per_task: list[dict[str, float]] = []
    counts, examples = [], []
    for t in range(len(split["tasks"])):
        items = task_items(family, data.records, split, [t], evaluation=True)
        if not len(items):
            raise TokenforgeError(f"{source}: no test items for task {t} ({', '.join(split['tasks'][t]['class_names'])})")
        texts = Texts(tokenizer, items.prompt, items.target, model.settings.max_text_len, family.prompt_is_prefix)
        units = data.units[np.asarray(items.image, dtype=np.int64)]
        # the decoder's positions: bos, the caption prompt, then what is generated (the end token included)
        limit = model.settings.max_text_len - 1 - (texts.prompt.shape[1] if family.prompt_is_prefix else 0)
        predictions = generate(model, units, texts, tokenizer, args.batch_size, min(args.generate_tokens or limit, limit))
        per_task.append({k: float(v) for k, v in family.score(predictions, items, records=data.records).items()})
        counts.append(len(items))
        examples.append([{"prompt": items.prompt[i], "prediction": predictions[i], "references": items.references[i][:3]}
                         for i in range(min(3, len(items)))])  # fmt: skip
    # a score some task lacks (object recall where a task's images have no scene layout) would shift its row: left out
    scores = {k: [s[k] for s in per_task] for k in per_task[0] if all(k in s for s in per_task)}
    averages = {k: float(np.mean(v[: args.task + 1])) for k, v in scores.items()}
    primary = scores[family.metric]
    row = {"task": args.task, "family": args.family, "metric": family.metric, "accuracy": primary, "scores": scores,
           "num_test": counts, "groups": [t["class_names"] for t in split["tasks"]],
           "average_accuracy": averages[family.metric], "average_scores": averages, "examples": examples}  # fmt: skip
    return row, {name: (values, averages[name]) for name, values in scores.items()}
