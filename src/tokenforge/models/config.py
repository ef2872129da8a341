"""A TokenViT's settings: `ModelConfig` (what model.json holds), the checks of its options, and which parameters a
prompted model tunes (`is_tuned`).

Torch-free, below both the model (models.tokenvit), which checks and reads its settings, and saving and loading
(models.store), which writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenforge.errors import TokenforgeError
from tokenforge.models import ATTENTIONS, ROUTINGS


@dataclass
class ModelConfig:
    grid: tuple[int, int]  # unit grid (h, w): the tokenizer's token grid
    codebook_size: int  # tokens: codes in the codebook; pixels: 0
    code_dim: int  # features per unit: codebook vector size (tokens) or patch*patch*channels (pixels)
    num_classes: int
    embed_dim: int = 64  # width; tiny because digits grids are 4x4
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    input: str = "tokens"
    patch: int = 1  # pixels only: patch side in pixels (the tokenizer's downsample factor)
    prompts: int = 0  # timm's register tokens after the class token (imported timm models; not VPT's prompt_tokens)
    mask_token: bool = False  # tokens: a learned mask embedding, code id `codebook_size` (replay's fill view)
    attention: str = "global"  # global (timm's) | routed: TRAR's routed attention spans (models.attention)
    orders: tuple[int, ...] = (0, 1, 2, 3)  # routed: span orders, each a (2o+1)x(2o+1) window; 0 = global (TRAR's)
    routing: str = "soft"  # routed: soft (softmax weights over the orders) | hard (gumbel-softmax, one order)
    prompt_tokens: int = 0  # VPT: learned prompt tokens after the class/register tokens, frozen backbone; 0: off
    prompt_deep: bool = False  # VPT-deep: a new set of prompt_tokens replaces them before every block after the first
    prompt_dropout: float = 0.0  # dropout on the prompt tokens in training forwards
    backbone_sha256: str | None = None  # prompted: sha256 of the frozen tensors (store.backbone_digest), set by save_model
    # model options without fields of their own (train.model_options, models/options/base.py): {option name or import
    # path: its settings}; each option's build() runs when the model is made, so a saved model is rebuilt with them
    extra_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.orders = tuple(self.orders)  # model.json and the CLI give lists


def check_prompts(config: ModelConfig) -> None:
    """VPT's settings: a whole number of tokens >= 0, a dropout probability in [0, 1)."""
    n = config.prompt_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TokenforgeError(f"train.prompts.tokens: a whole number >= 0 (0: off), got {n!r}")
    if not 0.0 <= config.prompt_dropout < 1.0:
        raise TokenforgeError(f"train.prompts.dropout: must be in [0, 1), got {config.prompt_dropout}")


def check_attention(config: ModelConfig) -> None:
    """The routed attention settings: known choices, orders distinct whole numbers >= 0."""
    if config.attention not in ATTENTIONS:
        raise TokenforgeError(f"attention: unknown attention {config.attention!r}; expected one of {', '.join(ATTENTIONS)}")
    if config.routing not in ROUTINGS:
        raise TokenforgeError(f"routing: unknown routing {config.routing!r}; expected one of {', '.join(ROUTINGS)}")
    orders = config.orders
    if not orders or any(isinstance(o, bool) or not isinstance(o, int) or o < 0 for o in orders) or len(set(orders)) < len(orders):
        raise TokenforgeError(f"orders: distinct whole numbers >= 0 (0 = global), at least one, got {list(orders)}")


def is_tuned(name: str) -> bool:
    """Whether a prompted model trains the parameter (or state-dict entry) `name`: the prompts and the head."""
    return "prompt" in name or name.startswith("vit.head.")
