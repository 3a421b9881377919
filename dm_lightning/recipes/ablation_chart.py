"""The ablation sweep's chart (``ablations.png``): grouped bars of AbsRel and δ1 per test split
and row (:mod:`dm_lightning.recipes.ablations`)."""

from __future__ import annotations

from pathlib import Path

from dm_lightning.evaluation.keys import metric_key


def write_chart(path: Path, results: dict[str, dict[str, float] | None], splits: list[str]) -> None:
    """Grouped bars: one panel per metric (AbsRel, δ1, x100), one group per test split, one
    bar per row with results."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

    rows = {name: metrics for name, metrics in results.items() if metrics is not None}
    columns = min(4, max(1, len(rows)))
    legend_rows = -(-max(1, len(rows)) // columns)
    height = 4.0 + 0.3 * legend_rows
    # About 0.3 inch per bar, between a readable minimum and a page's width.
    bars_per_panel = len(splits) * max(1, len(rows))
    figure = Figure(figsize=(min(16.0, max(7.0, 2 * (0.3 * bars_per_panel + 1.2))), height))
    axes = figure.subplots(1, 2)
    width = 0.8 / max(1, len(rows))
    panels = (
        ("abs_rel", "AbsRel x100 (lower is better)"),
        ("delta1", "δ1 x100 (higher is better)"),
    )
    for ax, (metric, title) in zip(axes, panels):
        for i, (name, metrics) in enumerate(rows.items()):
            values = [
                100 * metrics.get(metric_key("test", s, metric), float("nan")) for s in splits
            ]
            positions = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(splits))]
            bars = ax.bar(positions, values, width, label=name, color=f"C{i % 10}")
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(splits)), splits, rotation=20 if len(splits) > 3 else 0)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    # One legend under both panels, where it never covers a bar.
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.3 * legend_rows / height + 0.02, 1, 1))
    figure.savefig(path, dpi=100)
