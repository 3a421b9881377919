"""The names evaluation values are logged under: ``<stage>/<split>/<metric>`` per split
(``test/nyu/abs_rel``) and ``<stage>/<metric>`` for the first split's headline values
(``val/abs_rel``, which drives checkpoint selection). Every place that writes or reads such a
name builds or parses it here."""

from __future__ import annotations

from typing import NamedTuple


class MetricKey(NamedTuple):
    """A parsed ``<stage>/<split>/<metric>`` name."""

    stage: str  # "val" or "test"
    split: str  # the split's (benchmark's) name
    metric: str  # a metric (``abs_rel``) or a count (``num_images``)


def metric_key(stage: str, split: str | None, metric: str) -> str:
    """``<stage>/<split>/<metric>``, or ``<stage>/<metric>`` (a headline value) for split
    None."""
    return f"{stage}/{metric}" if split is None else f"{stage}/{split}/{metric}"


def is_stage_key(key: str, stage: str) -> bool:
    """Whether ``key`` is a value logged in ``stage`` (``test/nyu/abs_rel``, ``test/abs_rel``
    for ``test``)."""
    return key.startswith(f"{stage}/")


def parse_metric_key(key: str) -> MetricKey | None:
    """The stage, split and metric of a ``<stage>/<split>/<metric>`` name; None for any other
    (a headline ``<stage>/<metric>``, a loss, ...)."""
    parts = key.split("/")
    return MetricKey(*parts) if len(parts) == 3 else None
