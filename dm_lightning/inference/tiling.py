"""Tiled high-resolution depth for dm_lightning's predict: the code of
:mod:`dm_lightning.models.tiling_depthmaster` (which exports ship with the diffusers pipeline),
with its option errors as one-line :class:`~dm_lightning.errors.ConfigError` s."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dm_lightning.errors import ConfigError
from dm_lightning.models import tiling_depthmaster as _tiling
from dm_lightning.models.tiling_depthmaster import (  # noqa: F401 (the module's names)
    MIN_TILE_STD,
    PredictFn,
    TilingError,
    align_to,
    axis_tiles,
    axis_weights,
    default_overlap,
    tile_layout,
)


def check_tiling(tile_size: int | None, overlap: int | None, factor: int) -> None:
    """:func:`~dm_lightning.models.tiling_depthmaster.check_tiling`, raising ConfigError."""
    try:
        _tiling.check_tiling(tile_size, overlap, factor)
    except TilingError as err:
        raise ConfigError(str(err)) from err


def predict_tiled(*args: Any, **kwargs: Any) -> Tensor:
    """:func:`~dm_lightning.models.tiling_depthmaster.predict_tiled`, raising ConfigError for
    options that cannot work."""
    try:
        return _tiling.predict_tiled(*args, **kwargs)
    except TilingError as err:
        raise ConfigError(str(err)) from err
