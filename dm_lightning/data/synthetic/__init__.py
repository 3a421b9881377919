"""Procedural RGB-D scenes with exact metric depth, rendered by ray casting in pure numpy.

The generator needs no downloads: it is the data of the tests, the demo and the tiny configs.

* :mod:`~dm_lightning.data.synthetic.geometry`: primitives (:class:`Plane`, :class:`Box`,
  :class:`Sphere`), camera rays and :func:`ray_cast`;
* :mod:`~dm_lightning.data.synthetic.scenes`: :class:`Scene`, :func:`render`, the ``indoor``
  and ``outdoor`` scene makers and :func:`render_scene`; :data:`SOURCES` holds the two
  sources' :class:`~dm_lightning.data.sources.spec.SourceSpec`;
* :mod:`~dm_lightning.data.synthetic.writer`: :func:`write_split` and :func:`generate`, the
  shards (through the converters' engine) and ``index.json``.

Everything is deterministic given the seeds; nothing here imports torch.
"""

from dm_lightning.data.synthetic.geometry import (
    HIT_EPS,
    TEXTURES,
    Box,
    Material,
    Plane,
    Primitive,
    Sphere,
    camera_rays,
    look_rotation,
    ray_cast,
    ray_distance_to_depth,
)
from dm_lightning.data.synthetic.scenes import (
    SOURCES,
    Scene,
    make_indoor_scene,
    make_outdoor_scene,
    render,
    render_scene,
)
from dm_lightning.data.synthetic.writer import (
    INDEX_FORMAT,
    MAX_SAMPLES_PER_SPLIT,
    SPLIT_IDS,
    generate,
    sample_seed,
    write_split,
)

__all__ = [
    "HIT_EPS",
    "INDEX_FORMAT",
    "MAX_SAMPLES_PER_SPLIT",
    "SOURCES",
    "SPLIT_IDS",
    "TEXTURES",
    "Box",
    "Material",
    "Plane",
    "Primitive",
    "Scene",
    "Sphere",
    "camera_rays",
    "generate",
    "look_rotation",
    "make_indoor_scene",
    "make_outdoor_scene",
    "ray_cast",
    "ray_distance_to_depth",
    "render",
    "render_scene",
    "sample_seed",
    "write_split",
]
