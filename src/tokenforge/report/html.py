"""The package stage's report.html: one self-contained page (the plots as data URIs, every value escaped) with the
summary, each score's matrix and examples (VQA, captioning), the accuracy plots and table, the learning curve, the
storage bytes, the --images, the wall times, the config and the versions; and the pieces an experiment's report
(tokenforge.report.experiment) reuses: `table`, `img` and `page`.

The report's table leaves the cells above the diagonal empty: row t is measured after training task t, so column
j > t is a task not learned yet (those accuracies only enter forward transfer).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from tokenforge.report import ACCURACY_HEADLINES
from tokenforge.report.metrics import control_other_scores, control_rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _usage(value: float) -> str:
    # A fraction of the codebook, or (if a tokenizer reports it so) a number of codes in use.
    return _pct(value) if value <= 1 else f"{value:,.0f} codes"


def _bytes(value: float) -> str:
    return f"{value:,.0f} B" if value < 10_000 else f"{value:,.0f} B ({value / 2**20:,.2f} MiB)"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table of `header` and `rows`, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(path: Path, alt: str) -> str:
    """The PNG at `path` as an <img> with a data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _summary_rows(result: dict) -> list[list[Any]]:
    b, tok = result["bytes"], result["tokenizer"]
    return [
        ["tasks", result["num_tasks"]],
        *([name.replace("_", " "), _pct(result[name])] for name in (*ACCURACY_HEADLINES, "forward_transfer")),
        ["replay memory after the last task", _bytes(b["memory"])],
        ["memory / dataset token bytes", _pct(b["memory"] / b["dataset_tokens"] if b["dataset_tokens"] else None)],
        *(_tokenizer_rows(tok) if tok is not None else []),
        ["total wall time", f"{result['wall_time_s']['total']:.1f} s"],
    ]


def _tokenizer_rows(tok: dict) -> list[list[Any]]:
    rows = [["tokenizer PSNR", f"{tok['psnr']:.2f} dB"], ["tokenizer codebook usage", _usage(tok["codebook_usage"])]]
    if "used_codes" in tok and "trained_codebook_size" in tok:
        used, trained = tok["used_codes"], tok["trained_codebook_size"]
        rows.append(["tokenizer codes used", f"{used:,.0f} of {trained:,.0f} trained"])
    if "codebook_size" in tok:
        rows.append(["codebook size after pruning", f"{tok['codebook_size']:,.0f}"])
    if "perplexity" in tok:
        rows.append(["tokenizer perplexity", f"{tok['perplexity']:.1f}"])
    return rows


def _figure_html(path: Path, caption: str) -> str:
    return f"<figure>{img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _bytes_rows(b: dict) -> list[list[Any]]:
    raw = b["raw_pixels_per_image"]
    rows = []
    for form, label in (("raw_pixels", "raw pixels"), ("pixel_shards", "pixel shards (PNG)"), ("tokens", "VQ tokens")):
        per_image = b[f"{form}_per_image"]
        if per_image is None:  # imported tokens: no pixels were stored
            continue
        share = _pct(per_image / raw) if raw else "n/a"
        rows.append([label, f"{per_image:,.1f}", _bytes(b[f"dataset_{form}"]), share])
    return rows


def _score_sections(result: dict) -> list[str]:
    """VQA and captioning: each score's matrix (the 'accuracy' plots below show the headline score) and examples."""
    out = []
    for name, summary in (result.get("score_matrices") or {}).items():
        M = summary["accuracy_matrix"]
        rows = [[t] + [f"{v:.4f}" if j <= t else "" for j, v in enumerate(row)] for t, row in enumerate(M)]
        head = f"<h2>{html.escape(name)} (row: after training task, column: evaluated on task)</h2>"
        numbers = f"<p>final average {summary['final_average_accuracy']:.4f}, forgetting {summary['average_forgetting']:.4f}, " \
                  f"backward transfer {summary['backward_transfer']:.4f}</p>"  # fmt: skip
        out.append(head + table(["after task"] + [f"task {j}" for j in range(len(M))], rows) + numbers)
    for name, metric, rows in control_rows(result):
        head = f"<h2>{html.escape(metric)} against the {html.escape(name)} control (trained on every task at once)</h2>"
        cells = [[label, f"{a:.4f}", f"{b:.4f}", f"{c:.4f}", f"{a - c:+.4f}"] for label, a, b, c in rows]
        others = [[score, f"{final:.4f}", f"{value:.4f}"] for score, final, value in control_other_scores(result, name)]
        extra = table(["score", "final average", name], others) if others else ""
        out.append(head + table(["task", "just learned", "after the last task", name, f"just learned − {name}"], cells) + extra)
    for t, examples in enumerate(result.get("examples") or []):
        rows = [[e["prompt"], e["prediction"], " | ".join(e["references"])] for e in examples]
        out.append(f"<h3>Task {t}: examples after the last task</h3>" + table(["prompt", "prediction", "references"], rows))
    return out


def render_report(
    title: str, result: dict, versions: dict, config_text: str, bundle: Path, images: list[str] | tuple = ()
) -> str:
    """report.html: one page, no external files (the plots are data URIs), every value escaped.

    `images` names the extra NAME.png files in `bundle`, shown with their name as caption.
    """
    R, n, b = result["accuracy_matrix"], result["num_tasks"], result["bytes"]
    matrix_rows = [[t] + [f"{v:.4f}" if j <= t else "" for j, v in enumerate(row)] for t, row in enumerate(R)]
    old, auc = result.get("old_tasks_accuracy", [None] * n), result.get("shortcut_auc", [None] * n)
    curve_rows = [
        [t, f"{a:.4f}", _fraction(old[t]), _fraction(auc[t]), f"{b['memory_per_task'][t]:,}"]
        for t, a in enumerate(result["average_accuracy"])
    ]
    wall_rows = [[name, f"{s:.2f}"] for name, s in result["wall_time_s"].items()]
    version_rows = [["python", versions["python"]], ["platform", versions["platform"]]]
    version_rows += [[name, v or "not installed"] for name, v in versions["packages"].items()]
    figures = "".join(_figure_html(bundle / f"{name}.png", name) for name in images)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>" + table(["metric", "value"], _summary_rows(result)),
        *_score_sections(result),
        "<h2>Accuracy</h2>" + img(bundle / "accuracy_matrix.png", "accuracy matrix")
        + img(bundle / "average_accuracy.png", "average accuracy after each task"),
        "<h3>Accuracy matrix (row: after training task, column: evaluated on task; empty: not trained yet)</h3>"
        + table(["after task"] + [f"task {j}" for j in range(n)], matrix_rows),
        "<h3>After each task (shortcut AUC: how well a linear probe tells a replayed view from the whole sample; "
        "0.5 = indistinguishable, near 1 = replay can teach 'this view = an old class')</h3>"
        + table(["after task", "average accuracy", "old tasks' accuracy", "shortcut AUC", "memory bytes"], curve_rows),
        f"<h2>Storage ({b['dataset_images']:,} images, train + test)</h2>"
        + table(["form", "bytes per image", "dataset", "of raw pixels"], _bytes_rows(b)),
        *(["<h2>Images</h2>" + figures] if images else []),
        "<h2>Wall time per stage (s)</h2>" + table(["stage", "wall time (s)"], wall_rows),
        "<h2>Config</h2><pre>" + html.escape(config_text) + "</pre>",
        "<h2>Versions</h2>" + table(["package", "version"], version_rows),
    ]
    return page(title, sections)


STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:48%;margin:.5em 1% 0 0}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto}"
    "figure{margin:.5em 0}figure img{max-width:100%;image-rendering:pixelated}figcaption{color:#555}"
)


def page(title: str, sections: list[str], style: str = STYLE) -> str:
    """A whole HTML page: `title` escaped, the `sections` (HTML already escaped) one per line."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
