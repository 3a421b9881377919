"""The code cites docs/method.md by section (``docs/method.md §N``): every cited section exists,
and the sections are numbered 1, 2, ... in order."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHOD = REPO / "docs" / "method.md"
CITED = ("dm_lightning", "tools", "tests", "configs")


def _sections() -> list[int]:
    return [int(n) for n in re.findall(r"^## §(\d+) ", METHOD.read_text(), flags=re.MULTILINE)]


def test_sections_are_numbered_in_order():
    sections = _sections()
    assert sections == list(range(1, len(sections) + 1))
    assert len(sections) >= 8  # §8: the baselines


def test_every_citation_names_an_existing_section():
    sections = set(_sections())
    files = [REPO / "README.md"] + [
        p for top in CITED for p in (REPO / top).rglob("*") if p.suffix in (".py", ".yaml")
    ]
    cited = []
    for path in files:
        for match in re.finditer(r"docs/method\.md((?:,? ?(?:and )?§\d+)*)", path.read_text()):
            cited += [(path, int(n)) for n in re.findall(r"§(\d+)", match.group(1))]
    assert cited, "no citation of docs/method.md found"
    missing = [(str(p.relative_to(REPO)), n) for p, n in cited if n not in sections]
    assert not missing, missing
