"""What each source's shards hold: :class:`SourceSpec` and the registry of sources.

A :class:`SourceSpec` is the stored form of one source (name, image size, valid depth range,
depth scale), shared by everything that writes shards: the Hypersim and Virtual KITTI
converters (:mod:`~dm_lightning.data.sources.hypersim`, :mod:`~dm_lightning.data.sources.vkitti`)
and the synthetic generator (:mod:`dm_lightning.data.synthetic`). It is not a training config:
:class:`~dm_lightning.data.train_source.TrainSource` says how to *train* on shards (shard
pattern, probability, batch size); a SourceSpec says what the shards *contain*.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceSpec:
    """Stored form of one source: name, image size (pixels), valid open depth range (metres)
    and PNG depth scale (metres per uint16 unit).

    Attributes:
        name: the source's folder under the output root and its key in ``index.json``.
        height, width: stored image size in pixels (the synthetic generator's default size).
        min_depth, max_depth: valid open depth range in metres, written into every sample.
        depth_scale: metres per uint16 unit of the stored depth PNG.
        label: the ``source`` string of each sample's JSON and of the index entry; ``""``
            means ``name``.
    """

    name: str
    height: int
    width: int
    min_depth: float
    max_depth: float
    depth_scale: float
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


HYPERSIM = SourceSpec("hypersim", 480, 640, min_depth=1e-5, max_depth=65.0, depth_scale=1e-3)
VKITTI = SourceSpec("vkitti", 352, 1216, min_depth=1e-5, max_depth=80.0, depth_scale=1e-2)
# 1 mm units: 65.535 m fit in uint16, far beyond the 20 m range.
SYNTHETIC_INDOOR = SourceSpec(
    "indoor", 96, 128, min_depth=1e-3, max_depth=20.0, depth_scale=1e-3, label="synthetic_indoor"
)
# 2 mm units (1/500 m): 131.07 m fit in uint16, above the 80 m range.
SYNTHETIC_OUTDOOR = SourceSpec(
    "outdoor", 64, 208, min_depth=1e-3, max_depth=80.0, depth_scale=2e-3, label="synthetic_outdoor"
)

REGISTRY: dict[str, SourceSpec] = {
    spec.label: spec for spec in (HYPERSIM, VKITTI, SYNTHETIC_INDOOR, SYNTHETIC_OUTDOOR)
}
"""Every source dm_lightning writes, by its ``source`` label."""

HYPERSIM_FOCAL = 886.81
"""Hypersim focal length in pixels at :data:`HYPERSIM_FOCAL_WIDTH`; it scales with the width."""
HYPERSIM_FOCAL_WIDTH = 1024
VKITTI_FOCAL = 725.0087
"""Virtual KITTI 2 focal length in pixels (both cameras; unchanged by the crop)."""
