"""Import weight: shard tools and converters start without Lightning (the package's public
names are imported lazily, PEP 562)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _loaded_after(code: str) -> set[str]:
    """Top-level modules of interest imported by ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted({{'lightning', 'torch'}} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(eval(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    [
        "dm_lightning.data.shards",
        "dm_lightning.data.shard_reader",
        "dm_lightning.data.shard_paths",
        "dm_lightning.data.schema",
    ],
)
def test_data_modules_import_without_lightning(module):
    assert "lightning" not in _loaded_after(f"import {module}")


@pytest.mark.parametrize("tool", ["convert_vkitti.py", "convert_hypersim.py"])
def test_converter_help_imports_neither_lightning_nor_torch(tool):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{tool!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'tools' / tool)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
    )
    assert _loaded_after(code) == set()


def test_public_names_resolve_lazily():
    import dm_lightning

    assert set(dm_lightning.__all__) == set(dm_lightning._EXPORTS) <= set(dir(dm_lightning))
    for name in dm_lightning.__all__:
        assert getattr(dm_lightning, name).__name__ == name
    with pytest.raises(AttributeError):
        dm_lightning.NotAName  # noqa: B018
