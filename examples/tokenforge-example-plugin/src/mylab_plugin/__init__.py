"""An example tokenforge plugin package: `saliency` (a token scorer), `sqrt_tokens` (a memory method) and `adapters`
(a model option).

Each is one module; pyproject.toml announces them to tokenforge by entry points, so after `pip install` the
config names them like built-ins (`memory.scorer: saliency`). Without installing, name them by import path.
"""
