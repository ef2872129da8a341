"""The ViT's model options (`tokenforge.models.MODEL_OPTIONS`): one module each, behind one interface (`base`).

- `routed`: TRAR's routed attention spans (`train.attention: routed`, `--attention`, `--orders`, `--routing`);
- `prompts`: visual prompt tuning (VPT, `train.prompts`, `--prompt-*`) on a frozen backbone from `--init`;
- `expansion`: token expansion (ToE, `train.token_expansion`, `--toe-*`) while training.
Nothing here imports torch at import time: `tokenforge train --help` builds its flags from these modules.
"""
