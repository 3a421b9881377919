"""(Re)write the model card README.md of a dm_lightning export (see --help)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dm_lightning.tool_cli import run_tool, tool_parser

PROG = "model_card"
DESCRIPTION = """\
Write EXPORT/README.md, the Hugging Face model card of a dm_lightning export: metadata
(library, pipeline tag, licence, base model, data sets, tags), what the model predicts, how it
was trained (from EXPORT/dm_lightning.json and the run's config, kept in the folder as
dm_lightning_config.yaml), usage snippets, and with --results the evaluation table and
model-index results (stored in the folder as dm_lightning_eval.json, so later rewrites keep
them). Every export already carries a card; run this after evaluating it.

--results takes a test run's evaluation folder (results.json of the EvaluationReport
callback), a test_metrics.json, a recipe run folder's results.json (the entry of this
export), or a folder holding one of them. Exit status 2 with one line on bad input.
"""
EPILOG = """\
examples:
  python tools/model_card.py runs/tiny/stage2/version_0/export \\
      --results runs/tiny/test/version_0/evaluation
  python tools/model_card.py runs/recipe/stage2/version_0/export --results runs/recipe
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("export", metavar="EXPORT", help="export folder (unet/, vae/)")
    parser.add_argument("--results", metavar="PATH", help="evaluation results (file or folder)")
    parser.add_argument("--config", metavar="YAML", help="the run's config.yaml, if not kept")
    parser.add_argument("--repo", metavar="OWNER/NAME", help="hub id for the usage snippets")
    parser.add_argument("--base-model", metavar="ID", help="hub id of the base weights")
    parser.add_argument("--license", metavar="ID", help="licence id (default from the base)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="accept results recorded for another model folder, or a bare DepthMaster --repo",
    )
    return parser


def run(args: argparse.Namespace) -> Path:
    """Write the card; returns its path."""
    from dm_lightning.hub.eval_results import check_results_model, read_eval_results
    from dm_lightning.hub.model_card import CardChoices, write_model_card
    from dm_lightning.hub.push import check_export_folder, check_repo_name

    export = check_export_folder(Path(args.export))
    if args.repo:
        check_repo_name(args.repo, args.force)
    results = None
    if args.results:
        results = read_eval_results(args.results, export)
        check_results_model(results, export, args.force)
    config = Path(args.config) if args.config else None
    if config is None and (export.parent / "config.yaml").is_file():
        config = export.parent / "config.yaml"  # the default layout: <run>/export
    choices = CardChoices(
        model_ref=args.repo or str(export.resolve()),
        results=results,
        base_model=args.base_model,
        license=args.license,
    )
    return write_model_card(export, config, choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; 0 on success, 2 on bad input (one
    line ``model_card: error: ...`` on stderr)."""
    status, path = run_tool(PROG, build_parser(), run, argv)
    if not status:
        print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
