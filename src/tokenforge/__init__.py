"""tokenforge: class-incremental training of vision transformers on VQ tokens with core-token memories."""

__version__ = "0.1.0"
