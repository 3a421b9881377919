"""The Markdown tables of evaluation results, and the one writer every table of the package
goes through (:func:`markdown_table`: ``results.md``, the model card, the recipe's and the
ablations' tables, the settings under them, the terminal's, the GPU check's, the speed
benchmarks'; :func:`table_row` for a table printed row by row as its rows are measured).

- :func:`results_table`: this model per benchmark next to the published numbers
  (``results.md``, the model card);
- :func:`metrics_table`: models or ablation rows by test split (the recipe, the ablations);
- :func:`terminal_results_table`: one row per split, columns aligned as plain text (what
  ``dm-lightning test`` and ``validate`` print).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dm_lightning.evaluation.keys import metric_key, parse_metric_key

MISSING = "–"  # a table cell without a value


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> list[str]:
    """The lines of a Markdown table: the header row, the separator row, one line per row.

    Args:
        header: the column titles.
        rows: each row's cells, one per column, written as ``str()`` gives them (escape a
            ``|`` in a cell before).
        align: None: cells as given and a ``---`` separator per column (Markdown renderers
            align them); or one letter per column, ``l`` or ``r``: every cell padded to its
            column's width, left- or right-justified, and the right-aligned columns marked
            ``-:`` in the separator, so that the table reads aligned as plain text too.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    if align is None:
        return [table_row(header), "|---" * len(header) + "|", *map(table_row, rows)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def padded(cells: Sequence[str]) -> list[str]:
        return [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)]

    rule = [("-" * (w + 2)) if a == "l" else ("-" * (w + 1) + ":") for w, a in zip(widths, align)]
    return [
        table_row(padded(header)),
        "|" + "|".join(rule) + "|",
        *(table_row(padded(r)) for r in rows),
    ]


def table_row(cells: Sequence[Any]) -> str:
    """One row of a Markdown table, ``| a | b |``, each cell written as ``str()`` gives it.

    A table printed while its rows are measured prints ``markdown_table(header, [])`` (the
    header and separator lines) once, then this per row as it comes.
    """
    return "| " + " | ".join(map(str, cells)) + " |"


_PAPER_KINDS = ("kitti", "nyu", "eth3d", "scannet", "diode")
_PAPER_ROWS = {  # method -> (AbsRel, delta1) x100 per benchmark, in _PAPER_KINDS order
    "DepthMaster (paper)": ((8.2, 93.7), (5.0, 97.2), (5.3, 97.4), (5.5, 96.7), (21.5, 77.6)),
    "Marigold (paper)": ((9.9, 91.6), (5.5, 96.4), (6.5, 96.0), (6.4, 95.1), (30.8, 77.3)),
    "Lotus (paper)": ((9.3, 92.8), (5.3, 96.7), (6.8, 95.3), (6.0, 96.3), (22.8, 73.8)),
}
PAPER_RESULTS: dict[str, dict[str, tuple[float, float]]] = {
    method: dict(zip(_PAPER_KINDS, row)) for method, row in _PAPER_ROWS.items()
}
"""Published zero-shot results (docs/method.md §6): method -> benchmark kind -> (AbsRel, delta1),
both x100."""


def results_table(
    ours: dict[str, tuple[float, float] | None], kinds: dict[str, str], num_images: dict[str, int]
) -> str:
    """A markdown table: "this model" then the :data:`PAPER_RESULTS` rows.

    Args:
        ours: benchmark name -> (AbsRel, delta1) as fractions in [0, inf) and [0, 1], or None
            (no image evaluated).
        kinds: benchmark name -> benchmark kind (``nyu``, ... ; anything else has no paper
            number).
        num_images: benchmark name -> number of evaluated images, shown in the header.

    Returns:
        The table; cells are ``AbsRel / delta1`` x100 with one decimal, ``–`` where unknown.
    """

    def cell(value: tuple[float, float] | None, scale: float) -> str:
        return MISSING if value is None else f"{value[0] * scale:.1f} / {value[1] * scale:.1f}"

    names = list(ours)
    header = ["AbsRel / δ1 (x100)", *(f"{n} ({num_images[n]})" for n in names)]
    rows = [
        ["this model", *(cell(ours[n], 100.0) for n in names)],
        *(
            [method, *(cell(numbers.get(kinds[n]), 1.0) for n in names)]
            for method, numbers in PAPER_RESULTS.items()
        ),
    ]
    return "\n".join(markdown_table(header, rows)) + "\n"


def metric_splits(rows: dict[str, dict[str, float]]) -> list[str]:
    """The test splits of ``test/<split>/abs_rel`` keys in ``rows``' metrics, first seen first."""
    splits: dict[str, None] = {}
    for metrics in rows.values():
        for key in map(parse_metric_key, metrics):
            if key and key.stage == "test" and key.metric == "abs_rel":
                splits[key.split] = None
    return list(splits)


def metrics_table(rows: dict[str, dict[str, float] | None], splits: list[str]) -> str:
    """A markdown table of models or ablations (rows) by test split: ``<split> AbsRel`` and
    ``<split> δ1`` columns, x100 with one decimal, like the paper's ablation tables.

    Args:
        rows: row label -> logged metrics (``test/<split>/abs_rel`` and ``test/<split>/delta1``
            as fractions), or None for a row without results (shown as ``–``).
        splits: the test splits, in column order.
    """
    columns = [f"{s} {name}" for s in splits for name in ("AbsRel", "δ1")]
    keys = [metric_key("test", s, m) for s in splits for m in ("abs_rel", "delta1")]
    cells = [
        [
            label,
            *(
                MISSING if metrics is None or k not in metrics else f"{100 * metrics[k]:.1f}"
                for k in keys
            ),
        ]
        for label, metrics in rows.items()
    ]
    return "\n".join(markdown_table(["model", *columns], cells))


# Columns of :func:`terminal_results_table`: (header, logged value, x100). The skip columns are
# shown only when some split has a non-zero count.
_TABLE_COLUMNS = (
    ("images", "num_images", False),
    ("AbsRel x100", "abs_rel", True),
    ("δ1 x100", "delta1", True),
)
_SKIP_COLUMNS = (
    ("unreadable samples", "skipped_samples", False),
    ("images without valid depth", "skipped_images", False),
)


def terminal_results_table(
    stage: str, names: Sequence[str], metrics: Mapping[str, Any]
) -> str | None:
    """The terminal's results table of an evaluation: one row per split, in ``names`` order.

    Args:
        stage: "val" or "test": the prefix of the logged values.
        names: split names (a DataModule's ``val_names`` / ``test_names``).
        metrics: logged values (``trainer.callback_metrics``: ``<stage>/<split>/<name>``,
            tensors or floats; AbsRel and delta1 as fractions).

    Returns:
        A Markdown table, columns aligned: split, evaluated images, AbsRel and delta1 x100
        with two decimals, and the skipped samples and images when any is non-zero; None if
        no split has logged values.
    """

    def value(name: str, key: str) -> float:
        return float(metrics.get(metric_key(stage, name, key), 0.0))

    shown = [n for n in names if metric_key(stage, n, "abs_rel") in metrics]
    if not shown:
        return None
    skips = [c for c in _SKIP_COLUMNS if any(value(n, c[1]) for n in shown)]
    columns = [*_TABLE_COLUMNS, *skips]
    header = ["dataset", *(title for title, _, _ in columns)]
    rows = [
        [
            name,
            *(
                f"{100 * value(name, k):.2f}" if x100 else f"{value(name, k):.0f}"
                for _, k, x100 in columns
            ),
        ]
        for name in shown
    ]
    # the split name left-aligned, numbers right-aligned
    return "\n".join(markdown_table(header, rows, align="l" + "r" * len(columns)))
