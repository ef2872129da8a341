"""Continual learning: what the replay memory keeps and how it is fed back.

- `memory`: the memory record (key, label, task, kept positions and ids) and its storage on disk;
- `policy`: the buffer policy, what to keep: the budget, per-class quotas, building the memory after a task;
- `selection`: which samples of a task are kept, as a priority order;
- `scorers`: which tokens of a kept sample are kept (attribution through the model's probe API);
- `replay`: the replay mechanism, how kept samples are fed back during training.

The choice lists below are the one place each option's values are named: the CLI, the modules and a test
of the config schema read them from here (this file imports nothing heavy, so `--help` stays fast).
"""

# memory.method: none (fine-tuning) | coreset (whole samples) | coretokens (every sample, few tokens)
# | coretokenset (chosen samples, their top tokens) | joint (all data so far: the upper bound)
METHODS = ("none", "coreset", "coretokens", "coretokenset", "joint")
# memory.selection: which samples a task keeps (continual/selection.py)
SELECTIONS = ("random", "class_balanced", "herding", "gradient")
# memory.scorer: which tokens of a kept sample are stored (continual/scorers.py; for BLIP, models/blip.py)
SCORERS = ("rollout", "chefer", "gradcam", "atman", "random", "gradient")
# the ViT's (classification); gradient (x input) is BLIP's (vqa, captioning), which has atman and random too
VIT_SCORERS = ("rollout", "chefer", "gradcam", "atman", "random")
# memory.view: how a kept sample is replayed, as its kept tokens only or as a whole grid filled (continual/replay.py)
VIEWS = ("subset", "fill")
# memory.fill: what the non-kept positions of a filled grid hold: the most frequent code, a learned mask
# embedding (tokens), the mean patch (pixels), the codes a pretrained masked-token model predicts (tokens)
# (each with the input it is for)
FILL_INPUTS = {"frequent": "tokens", "mask": "tokens", "mean": "pixels", "mtm": "tokens"}
FILLS = tuple(FILL_INPUTS)
# memory.schedule: memory rows drawn every step, or every row once per epoch (the paper's loader)
SCHEDULES = ("step", "epoch")
# train.input_dropout_mode: whole batches as subsets (from task 1), or per-token dropout from task 0 (the paper's)
DROPOUT_MODES = ("batch", "token")
