"""Every command README shows still works as written: each ``dm-lightning`` command (also
behind ``torchrun ... -m dm_lightning``) parses with the shipped configs (``--print_config``:
argument names, config files and class paths resolved), and each ``python tools/X.py`` command
uses only options the tool declares. What the commands do is tested where they are built
(test_cli, test_inference, test_pipeline, test_ablations, ...) and by the demo."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import runpy
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

from dm_lightning.cli import main

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[list[str]]:
    """The shell commands of README's ``bash`` blocks, continuation lines joined, comments
    dropped, split into words."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _cli_words(words: list[str]) -> list[str] | None:
    """The dm-lightning arguments of a command, or None when it is not one."""
    if words[0] == "dm-lightning":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["dm_lightning"]:
        return words[words.index("-m") + 2 :]
    return None


CLI_COMMANDS = [args for w in readme_commands() if (args := _cli_words(w)) is not None]
TOOL_COMMANDS = [
    w[1:] for w in readme_commands() if w[0] in ("python", "python3") and w[1].startswith("tools/")
]


def test_readme_has_commands_of_both_kinds():
    assert len(CLI_COMMANDS) >= 5 and len(TOOL_COMMANDS) >= 3


@pytest.mark.parametrize("args", CLI_COMMANDS, ids=lambda a: " ".join(a)[:80])
def test_readme_cli_command_parses(args, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    if "--help" in args or any(a.endswith(".help") for a in args):
        extra: list[str] = []
    else:
        extra = ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *extra])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert capsys.readouterr().out.strip()


@functools.cache
def tool_help(tool: str) -> str:
    """``python TOOL --help``, run in this process (its imports are already loaded here: a
    subprocess per tool cost ~7 s of start-up each)."""
    out = io.StringIO()
    with (
        mock.patch.object(sys, "argv", [tool, "--help"]),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit) as exit_info,
    ):
        runpy.run_path(str(REPO / tool), run_name="__main__")
    assert exit_info.value.code in (0, None), f"{tool} --help exited {exit_info.value.code}"
    return out.getvalue()


@pytest.mark.parametrize("words", TOOL_COMMANDS, ids=lambda w: " ".join(w)[:80])
def test_readme_tool_command_uses_declared_options(words):
    tool, *args = words
    assert (REPO / tool).is_file(), f"README runs {tool}, which does not exist"
    help_text = tool_help(tool)
    for option in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", help_text), (
            f"README passes {option} to {tool}, which its --help does not list"
        )
