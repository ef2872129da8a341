"""MkDocs hook: the benchmark pages' tables and figures, from benchmarks/results/*.json at build time.

In mkdocs.yml:

    hooks:
      - docs/hooks/benchmarks.py

- `on_files` adds the figures to the site: the PNGs of benchmarks/results/ that pages show (mkdocs serves only
  files under docs/, so they are copied in as generated files), and the plots drawn from the JSON (matplotlib;
  without it those figures are left out and their pages say so);
- `on_page_markdown` replaces each `<!-- table: NAME -->` and `<!-- figure: NAME -->` of a page by the table
  rendered from the JSON, or the figure's image.

The rendering lives in benchmark_tables.py next to this file (no mkdocs, no torch), which the tests call.
"""

from __future__ import annotations

import logging
import posixpath

import benchmark_tables as bt  # docs/hooks/ is on sys.path while MkDocs loads a hook
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.benchmarks")

_made: set[str] = set()  # the figures this build added to the site


def on_files(files: Files, config) -> Files:
    _made.clear()
    for name, fig in bt.FIGURES.items():
        src_uri = f"{bt.FIGURE_DIR}/{fig.filename}"
        if files.get_file_from_path(src_uri) is not None:
            continue  # a file of that name under docs/ wins
        try:
            content = bt.figure_content(name)
        except ImportError as exc:  # matplotlib missing: the page notes it (INFO, so --strict still builds)
            log.info("benchmark figure %s not drawn: %s", name, exc)
            continue
        files.append(File.generated(config, src_uri, content=content))
        _made.add(name)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!--" not in markdown or not bt.PLACEHOLDER.search(markdown):
        return markdown
    page_dir = posixpath.dirname(page.file.src_uri)
    return bt.render_markdown(markdown, bt.RESULTS, page_dir=page_dir, figures=set(_made))
