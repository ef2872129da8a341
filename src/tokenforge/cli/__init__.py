"""The `tokenforge` command: one subcommand per pipeline stage.

One module per subcommand in this package (`tokenforge/cli/<stage>.py`), each with `add_arguments(parser)`
and `run(args, tracker)`; this file wires them into argparse, opens the MLflow child run when `--track` is
given, and turns a TokenforgeError into one line on stderr and exit status 2. CLI modules import no torch
(nor mlflow, pyarrow, ...) at import time: `run` imports the library it calls, so `--help` stays fast
(a test checks that building the parser leaves torch out of `sys.modules`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

from tokenforge import __version__
from tokenforge.errors import TokenforgeError

# In pipeline order; each name is also the module, the Snakemake rule and the results folder.
# After them the tools that read finished runs; a '-' in their name is a '_' in the module's (tokenforge/cli/).
STAGES = (
    "shard",
    "tokenizer",
    "tokenize",
    "tokenadapt",
    "synonyms",
    "seit",
    "split",
    "pretrain",
    "train",
    "evaluate",
    "package",
    "summary",
    "track",
    "compare",
    "log-bundle",
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    group.add_argument(
        "--track",
        metavar="RESULTS_DIR",
        default=None,
        help="log this run to MLflow as a child of the pipeline run kept in RESULTS_DIR (default: no tracking)",
    )
    group.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra MLflow tag for this run (repeatable), e.g. --tag task=2",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example commands of module docstrings as written, and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenforge",
        description="Class-incremental training of vision transformers on storage-efficient VQ tokens, "
        "replaying a core-token memory. Each subcommand is one stage of the Snakemake pipeline "
        "and also runs on its own.",
    )
    parser.add_argument("--version", action="version", version=f"tokenforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name in STAGES:
        module = importlib.import_module(f"tokenforge.cli.{name.replace('-', '_')}")
        doc = (module.__doc__ or name).strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(p)
        _add_common(p)
        p.set_defaults(func=module.run)
    return parser


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TokenforgeError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def main(argv: list[str] | None = None) -> int:
    if argv is None and os.environ.get("TOKENFORGE_WARM"):  # a pipeline's warm-start server runs the job (tokenforge.warm)
        from tokenforge.warm_client import run_client

        code = run_client(sys.argv[1:])
        if code is not None:
            return code
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from tokenforge.tracking.runs import child_run

        # Under torchrun every process runs this; only rank 0 tracks, so a job is one MLflow run.
        track = args.track if int(os.environ.get("RANK", "0") or 0) == 0 else None
        with child_run(track, rule=args.command, tags=_parse_tags(args.tag), args=args) as tracker:
            start = time.perf_counter()
            args.func(args, tracker)
            tracker.log_metrics({"wall_s": time.perf_counter() - start})
    except TokenforgeError as exc:
        print(f"tokenforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
