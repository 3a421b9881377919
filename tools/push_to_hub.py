"""Upload a dm_lightning export to the Hugging Face hub (see --help)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dm_lightning.tool_cli import run_tool, tool_parser

PROG = "push_to_hub"
DESCRIPTION = """\
Upload EXPORT (a dm_lightning export: unet/, vae/, its model card) to the Hugging Face hub
repository --repo, created if absent, with huggingface_hub's create_repo + upload_folder.
The card's usage snippets are rewritten to load --repo first.

Name the repository so it cannot pass for PolyU-VCLab's unrelated "DepthMaster" (panoramic
metric depth): a bare DepthMaster name is refused without --force; the suggested name is
<user>/dm-lightning-depthmaster-<stage>-<target> (printed when --repo is missing).

Exit status: 0 uploaded; 2 bad input (not an export, a bad or bare DepthMaster repository
name), before anything is sent; 1 the hub could not be reached or refused the upload. Errors
are one line `push_to_hub: error: ...` on stderr.
"""
EPILOG = """\
example:
  python tools/push_to_hub.py runs/recipe/stage2/version_0/export \\
      --repo alice/dm-lightning-depthmaster-stage2-sqrt-disparity --private
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("export", metavar="EXPORT", help="export folder (unet/, vae/)")
    parser.add_argument("--repo", metavar="OWNER/NAME", help="hub repository id")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="hub token (default: HF_TOKEN or hf auth login)")
    parser.add_argument(
        "--force", action="store_true", help="accept a bare DepthMaster repository name"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; the exit status above."""
    from dm_lightning.errors import ConfigError
    from dm_lightning.hub.push import check_export_folder, push_export, suggested_repo

    def push(args: argparse.Namespace) -> str:
        if not args.repo:
            folder = check_export_folder(Path(args.export))
            raise ConfigError(f"--repo is required, e.g. --repo {suggested_repo(folder)}")
        url = push_export(Path(args.export), args.repo, args.private, args.token, args.force)
        print(f"uploaded {args.export} to {url}")
        return url

    return run_tool(PROG, build_parser(), push, argv, error_status=None)[0]


if __name__ == "__main__":
    sys.exit(main())
