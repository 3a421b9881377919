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

from dm_lightning.data.synthetic.scenes import SOURCES, Scene, render_scene
from dm_lightning.data.synthetic.writer import generate, sample_seed, write_split

# The entry points; the primitives and ray casting are imported from .geometry itself.
__all__ = ["SOURCES", "Scene", "generate", "render_scene", "sample_seed", "write_split"]
