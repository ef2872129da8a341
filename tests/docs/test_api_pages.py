"""The API reference covers every public module: each file of src/tokenforge whose path has no part starting with
`_` (packages by their folder) has a `::: tokenforge.<module>` block on some docs/api/*.md page, and every block
names a module that exists."""

from __future__ import annotations

import re

from helpers.pipeline import REPO

SRC = REPO / "src"
API = REPO / "docs" / "api"
BLOCK = re.compile(r"^::: *([\w.]+) *$", re.MULTILINE)


def public_modules() -> set[str]:
    out = set()
    for path in (SRC / "tokenforge").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "__pycache__" in path.parts or any(p.startswith("_") for p in parts):
            continue
        out.add(".".join(parts))
    return out


def documented() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in sorted(API.glob("*.md")):
        for name in BLOCK.findall(page.read_text()):
            found.setdefault(name, []).append(page.name)
    return found


def test_every_public_module_has_an_api_block():
    modules = public_modules()
    assert "tokenforge.engine.deepspeed" in modules and "tokenforge.data.sources.digits" in modules
    missing = sorted(modules - set(documented()))
    assert not missing, f"public modules missing from docs/api/*.md: {missing}"


def test_every_api_block_names_a_module_once():
    found = documented()
    stale = sorted(set(found) - public_modules())
    assert not stale, f"docs/api blocks name no public module: {stale}"
    twice = {name: pages for name, pages in found.items() if len(pages) > 1}
    assert not twice, f"documented on several pages: {twice}"


def test_each_subpackage_has_its_page():
    pages = {p.stem for p in API.glob("*.md")}
    subpackages = {p.name for p in (SRC / "tokenforge").iterdir() if (p / "__init__.py").exists()}
    top_level = {p.stem for p in (SRC / "tokenforge").glob("*.py") if not p.stem.startswith("_")}
    assert subpackages | top_level | {"index"} == pages
    for sub in subpackages:  # a subpackage's modules, nested ones included, are on its own page
        names = BLOCK.findall((API / f"{sub}.md").read_text())
        assert {m for m in public_modules() if m == f"tokenforge.{sub}" or m.startswith(f"tokenforge.{sub}.")} == set(names)
