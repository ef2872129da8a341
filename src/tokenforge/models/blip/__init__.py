"""BLIP on unit grids: Hugging Face `transformers` BLIP for sequential VQA and captioning on VQ tokens (or pixels).

The model is `transformers`' `BlipForQuestionAnswering` (`task="vqa"`) or `BlipForConditionalGeneration`
(`task="captioning"`), held as `BlipModel.hf`, built from a small `BlipConfig` from scratch (`build_blip`) or loaded
from a local checkpoint folder (`BlipModel.from_pretrained`). Only its image input changes: the vision model's
`embeddings` module (`vision_model.embeddings`) is replaced by `UnitStem`, which reads *units* (code ids or pixel
patches, at any subset of grid positions) instead of an image.

- `settings`: `BlipSettings` and the per-task `TaskSpec` (what VQA and captioning change in the model);
- `stem`: `UnitStem`, how units and positions reach it, and its initialisation from a checkpoint;
- `text`: the id conventions (targets, prompts, generated ids) and the text batch built from them;
- `hf_config`: a scratch `BlipConfig`, the settings' ids written where HF reads them, seeded construction;
- `hf_patch`: the transformers 5.x cross-attention mask workaround;
- `model`: `BlipModel` (pack, loss, generate, relevance, save/load) and `build_blip`;
- `store`: the saved files (`save` / `load`) and pretrained checkpoints (`from_pretrained`).

Relevance per image unit (`BlipModel.relevance`: gradient x input, AtMan, random) is
`tokenforge.continual.blip_relevance` (with its `RELEVANCE_METHODS`), imported only when called.

Deviations from HF BLIP: the stem (above); the vision config's `image_size` / `patch_size` of a scratch model are
placeholders (the stem owns the grid); all `initializer_range`s are 0.02 (the vision default, 1e-10, does not train
from scratch); the stem's Linear is initialised as HF initialises Linears (normal 0.02, zero bias); no dropout
(BLIP's defaults).
"""

from tokenforge.models.blip.model import BlipModel, build_blip
from tokenforge.models.blip.settings import TASKS, BlipSettings, TaskSpec
from tokenforge.models.blip.stem import UnitStem

__all__ = ["TASKS", "BlipModel", "BlipSettings", "TaskSpec", "UnitStem", "build_blip"]
