"""BLIP's settings and its tasks: `BlipSettings` (the architecture, the ids, the unit grid and what a unit is) and one
`TaskSpec` per task, the only place the model's code learns what differs between VQA and captioning.

- `vqa`: `transformers`' `BlipForQuestionAnswering`; the prompt is a question, encoded by the text encoder while it
  cross-attends to the image, and the answer decoder cross-attends to the encoded question;
- `captioning`: `BlipForConditionalGeneration`; the prompt is a decoder prefix (e.g. "a picture of"), and the caption
  decoder cross-attends to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenforge.errors import TokenforgeError


@dataclass(frozen=True)
class TaskSpec:
    """What a task changes in the model; chosen once, from `BlipSettings.task` (`TASK_SPECS`)."""

    name: str
    hf_class: str  # the transformers class of the whole model
    question: bool  # the prompt is a question for the text encoder (else a decoder prefix, may be empty)
    image_reader: str  # the HF submodule whose cross-attention attends to the image tokens (AtMan's "all" scope)

    def hf_type(self) -> type:
        """The transformers class (imported on first use: transformers is slow to import)."""
        import transformers

        return getattr(transformers, self.hf_class)


TASK_SPECS = {
    "vqa": TaskSpec("vqa", "BlipForQuestionAnswering", question=True, image_reader="text_encoder"),
    "captioning": TaskSpec("captioning", "BlipForConditionalGeneration", question=False,
                           image_reader="text_decoder.bert"),
}
TASKS = tuple(TASK_SPECS)
INPUT_KINDS = ("tokens", "pixels")


def task_spec(task: str) -> TaskSpec:
    """The task's `TaskSpec`; a TokenforgeError for an unknown task."""
    if task not in TASK_SPECS:
        raise TokenforgeError(f"blip: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASK_SPECS[task]


@dataclass
class BlipSettings:
    task: str = "vqa"  # vqa | captioning
    input: str = "tokens"  # tokens (code ids) | pixels (uint8 patches)
    width: int = 64  # vision and text hidden size (equal: VQA's decoder cross-attends to the text encoder)
    vision_layers: int = 2
    text_layers: int = 2  # the text encoder's (VQA) and the decoder's
    heads: int = 4
    mlp_ratio: float = 2.0
    vocab_size: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    sep_id: int = 2  # the end token the decoder learns and generation stops on (may equal eos_id)
    max_text_len: int = 32  # text positions: decoder [bos, prompt, target, sep] and VQA question lengths
    grid: tuple[int, int] = (4, 4)  # unit grid (h, w)
    num_codes: int = 0  # tokens: codebook size
    code_dim: int = 0  # tokens: codebook vector size
    patch_features: int = 0  # pixels: values per unit, p * p * C
    pretrained: str | None = None  # a local HF BLIP checkpoint folder the model started from (build_blip loads it)
    blind: bool = False  # the question-only control: the vision model sees no image units, only its class token

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # JSON gives a list

    def check(self) -> None:
        """One-line TokenforgeErrors for impossible settings."""
        task_spec(self.task)
        if self.input not in INPUT_KINDS:
            raise TokenforgeError(f"blip: unknown input {self.input!r}; expected one of {', '.join(INPUT_KINDS)}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise TokenforgeError(f"blip: grid must be [h, w] with h, w >= 1, got {list(self.grid)}")
        if self.width < 1 or self.heads < 1 or self.width % self.heads:
            raise TokenforgeError(f"blip: width {self.width} must be a positive multiple of heads {self.heads}")
        if self.vision_layers < 1 or self.text_layers < 1:
            raise TokenforgeError("blip: vision_layers and text_layers must be >= 1")
        if self.vocab_size < 1:
            raise TokenforgeError(f"blip: vocab_size must be >= 1, got {self.vocab_size}")
        for name in ("pad_id", "bos_id", "eos_id", "sep_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise TokenforgeError(f"blip: {name} {value} is outside the vocabulary 0..{self.vocab_size - 1}")
        if self.max_text_len < 3:
            raise TokenforgeError(f"blip: max_text_len must be >= 3 (bos, a token, sep), got {self.max_text_len}")
        if self.input == "tokens" and (self.num_codes < 1 or self.code_dim < 1):
            raise TokenforgeError("blip: input tokens needs num_codes >= 1 and code_dim >= 1")
        if self.input == "pixels" and self.patch_features < 1:
            raise TokenforgeError("blip: input pixels needs patch_features (p * p * C) >= 1")

    @property
    def units(self) -> int:
        return self.grid[0] * self.grid[1]
