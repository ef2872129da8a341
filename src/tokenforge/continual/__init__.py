"""Continual learning: what the replay memory keeps and how it is fed back.

- `memory`: the memory record (key, label, task, kept positions and ids) and its storage on disk;
- `methods`: the memory methods (`memory.method`): whether a memory is kept, and how many tokens per sample;
- `policy`: the buffer policy, what to keep: the budget, per-class quotas, building the memory after a task;
- `selection`: which samples of a task are kept, as a priority order;
- `scorers`: which tokens of a kept sample are kept (attribution through the model's probe API); `blip_relevance`
  the same for BLIP (vqa, captioning);
- `replay`: the replay mechanism, how kept samples are fed back during training.

The registries below are the one place each pluggable option's values are named (tokenforge/plugins.py): the config
schema, the CLI's choices, the docs and the modules read them from here. A registration names its implementation by
import path, so this file imports nothing heavy and `--help` stays fast. A researcher's own method, selection or
scorer plugs in by import path (`memory.scorer: "mylab.saliency:score"`) or as an installed package's entry point
(group `tokenforge.methods`, `tokenforge.selections`, `tokenforge.scorers`); the interfaces are documented in
`methods`, `selection` and `scorers`. The plain tuples after them are fixed choices of the replay mechanism.
"""

from tokenforge.plugins import Registry


def _method_check(obj: object) -> str | None:
    needed = ("keeps_memory", "trains_on_seen", "tokens_per_sample")
    missing = [name for name in needed if not hasattr(obj, name)]
    if isinstance(obj, type) or missing:
        return f"a {type(obj).__name__} without {', '.join(missing or needed)} (see tokenforge.continual.methods.MemoryMethod)"
    return None


# memory.method (continual/methods.py): none (fine-tuning) | coreset (whole samples) | coretokens (every sample, few
# tokens) | coretokenset (chosen samples, their top tokens) | joint (all data so far: the upper bound)
METHODS = Registry("method", key="memory.method", group="tokenforge.methods", check=_method_check)
for _name in ("none", "coreset", "coretokens", "coretokenset", "joint"):
    METHODS.register(_name, f"tokenforge.continual.methods:{_name.upper()}")

# memory.selection (continual/selection.py): which samples a task keeps, as a priority order
SELECTIONS = Registry("selection", key="memory.selection", group="tokenforge.selections")
SELECTIONS.register("random", "tokenforge.continual.selection:random_order")
SELECTIONS.register("class_balanced", "tokenforge.continual.selection:class_balanced_order")
SELECTIONS.register("herding", "tokenforge.continual.selection:herding_order")
SELECTIONS.register("gradient", "tokenforge.continual.selection:gradient_order")

# memory.scorer (continual/scorers.py; BLIP's in continual/blip_relevance.py): which tokens of a kept sample are
# stored. rollout, chefer, gradcam: the ViT's (classification); gradient (x input): BLIP's (vqa, captioning); atman
# and random: both.
SCORERS = Registry("scorer", key="memory.scorer", group="tokenforge.scorers")
for _name in ("rollout", "chefer", "gradcam", "atman", "random", "gradient"):
    SCORERS.register(_name, f"tokenforge.continual.scorers:{_name.upper()}")
del _name

# memory.view: how a kept sample is replayed, as its kept tokens only or as a whole grid filled (continual/replay.py)
VIEWS = ("subset", "fill")
# memory.fill (continual/fills.py): what the non-kept positions of a filled grid hold: the most frequent code, a
# learned mask embedding (tokens), the mean patch (pixels), the codes a pretrained masked-token model predicts (tokens)
def _fill_check(obj: object) -> str | None:
    if isinstance(obj, type) or not (hasattr(obj, "value") and hasattr(obj, "input")):
        return f"a {type(obj).__name__} without value() and input (see tokenforge.continual.fills.Fill)"
    return None


FILLS = Registry("fill", key="memory.fill", group="tokenforge.fills", check=_fill_check)
for _fill in ("frequent", "mask", "mean", "mtm"):
    FILLS.register(_fill, f"tokenforge.continual.fills:{_fill.upper()}")
del _fill
# memory.schedule: memory rows drawn every step, or every row once per epoch (the paper's loader)
SCHEDULES = ("step", "epoch")
# train.input_dropout_mode: whole batches as subsets (from task 1), or per-token dropout from task 0 (the paper's)
DROPOUT_MODES = ("batch", "token")
