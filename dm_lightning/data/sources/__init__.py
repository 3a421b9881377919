"""Writing training sets as shards: the Hypersim and Virtual KITTI 2 converters, and the
engine they share with the synthetic generator.

One job per module:

* :mod:`~.spec`: :class:`~.spec.SourceSpec`, what a source's shards hold, and the registry;
* :mod:`~.raster`: pixel operations (tone mapping, planar depth, nearest-exact resize);
* :mod:`~.inputs`: locating, reading and decoding input files in folders and tars;
* :mod:`~.engine`: the parallel, resumable, atomic shard writer and the ``index.json`` entries;
* :mod:`~.frames`: split-list frames -> the engine (:func:`~.frames.convert_frames`);
* :mod:`~.hypersim`, :mod:`~.vkitti`: each dataset's frames, loaders and ``convert_*``;
* :mod:`~.cli`: the converter command lines (``tools/convert_*.py``).

Nothing here imports torch; import the submodules directly (this package imports none).
"""
