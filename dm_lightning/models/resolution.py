"""The long edge (pixels) the network runs at when predicting: checked, recorded with a model,
and read back as ``predict``'s default.

``processing_res`` is spelled the same everywhere (``--model.init_args.processing_res``,
``predict_images(processing_res=...)``, an export's ``dm_lightning.json``):

- a positive integer >= the VAE's downsampling factor (8 for SD-2): the long edge in pixels,
  the other edge scaled to keep the aspect ratio (both rounded to multiples of the factor);
  outputs are resized back to the input's size;
- ``"native"``: each image's own size (memory and time grow with the image's pixels);
- ``None``: the model's recorded one, else :data:`DEFAULT_PROCESSING_RES` (768 pixels,
  Marigold's and the DepthMaster recipe's; :class:`~dm_lightning.models.model_facts.
  ModelFacts`), for ``predict``; at validation and test, each benchmark's own (native size
  for shard splits).
"""

from __future__ import annotations

from dm_lightning.errors import ConfigError
from dm_lightning.models.pipeline_depthmaster import DEFAULT_PROCESSING_RES
from dm_lightning.models.tiling_depthmaster import working_size as pipeline_working_size

#: The ``processing_res`` value that runs every image at its own size.
NATIVE = "native"


def check_processing_res(value: object, factor: int, where: str) -> int | str | None:
    """``value`` if it is a valid ``processing_res`` (see the module docstring), else raise.

    Args:
        value: what the user gave.
        factor: the VAE's downsampling factor (the smallest long edge the network can run at).
        where: the option's name for the message (``model.init_args.processing_res``).

    Raises:
        ConfigError: anything else (0, negatives, edges below ``factor``, floats, other
            strings, booleans), naming the value and what is expected.
    """
    if value is None or value == NATIVE:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= factor:
        return value
    raise ConfigError(
        f"{where} must be a long edge in pixels >= {factor} (the VAE's downsampling factor), "
        f"'{NATIVE}' (each image's own size) or null (the model's recorded default, else "
        f"{DEFAULT_PROCESSING_RES}); got {value!r}"
    )


def network_res(value: int | str | None) -> int | None:
    """The ``processing_res`` argument of :meth:`DepthMaster.predict` for a checked value:
    ``"native"`` and None run at the image's own size (None)."""
    return None if value in (None, NATIVE) else int(value)  # type: ignore[arg-type]


def working_size(
    height: int, width: int, processing_res: int | str | None, factor: int
) -> tuple[int, int]:
    """(height, width) the network runs an image of ``height`` x ``width`` pixels at: the long
    edge scaled to ``processing_res`` (None or ``"native"``: the image's own size), both edges
    rounded to multiples of the VAE factor ``factor`` (at least one factor). Shared by
    :meth:`DepthMaster.working_size <dm_lightning.models.depthmaster.DepthMaster.working_size>`
    and the onnxruntime backend, which must resize exactly as PyTorch does; the arithmetic is
    the diffusers pipeline's (its module ships alone with exports), after the value check.

    Raises:
        ConfigError: ``processing_res`` is not None and not an integer >= ``factor``.
    """
    if processing_res is not None:
        processing_res = network_res(check_processing_res(processing_res, factor, "processing_res"))
    return pipeline_working_size(height, width, processing_res, factor)
