"""Tiled high-resolution depth: a global pass for the layout plus full-detail tiles, aligned to
it and blended without seams (:func:`predict_tiled`).

Self-contained on purpose (torch only): every export ships this file beside
``pipeline_depthmaster.py``, whose ``tile_size`` option runs it;
:mod:`dm_lightning.inference.tiling` gives dm_lightning's predict the same code. It also holds
:func:`working_size`, the network input size rule the pipeline and the global pass share: here
rather than in the pipeline file, so the two shipped files import one way only (pipeline ->
tiling).

A single pass at the processing resolution (768 px for SD-2 models) blurs a 4K photo: every
output pixel is upsampled from a 5x smaller prediction. Tiles at the image's own pixels keep the
detail, but each tile's relative depth has its own unknown scale and shift, so pasting them
gives a chessboard (Depth-Anything-V2 #278). Here:

1. **Global pass**: the whole image at ``processing_res`` (long edge, rounded to multiples of
   the VAE factor), upsampled bilinearly to full size: ``G``, the layout every tile agrees with.
2. **Tiles**: overlapping ``tile_size`` x ``tile_size`` crops of the full-size image, each run
   at its *native* size (one image pixel = one network pixel: that is what "full detail"
   means, and with the default ``tile_size = processing_res`` the network sees the input size
   it runs at anyway, so its receptive field covers the same share of the input as in the
   global pass). Each tile prediction ``P`` is aligned to ``G`` on the tile's area by least
   squares, ``s * P + b ~ G`` (in the prediction's own [0, 1] space, float64). A fit that is
   ill-conditioned (a nearly flat tile: sky, one wall; or a non-positive or non-finite scale,
   i.e. the tile contradicts the layout) is not trusted: that tile contributes ``G`` itself.
3. **Blend**: separable raised-cosine ramps over each overlap (``sin^2`` rising where a tile
   enters, ``cos^2`` falling where it leaves, at the same phase, so two neighbours always sum
   to 1; normalised per axis where three tiles overlap); the image's outer edges are at full
   weight. Weights are C1-smooth and sum to 1 at every pixel, so an exact per-tile affine
   leaves no trace. The result is clipped to [0, 1] at the end.

Memory: only the global working-size image and one tile at a time reach ``predict_fn`` (and so
the device): device memory is bounded by ``max(tile_size, processing_res)``, not the image. The
full-size image, ``G`` and one float32 accumulator are held on the host, O(H x W), which is
inherent to returning a full-size map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class TilingError(ValueError):
    """A tiling option that cannot work (dm_lightning turns it into a one-line ConfigError)."""


#: (B, 3, h, w) float in [0, 1] on the CPU, h and w multiples of the VAE factor -> (B, 1, h, w)
#: relative prediction in [0, 1] (any device), e.g. ``lambda x: net.predict(x, None)``.
PredictFn = Callable[[Tensor], Tensor]

#: A tile whose prediction has a standard deviation below this (0.1 % of the [0, 1] range) is
#: treated as flat: the least-squares scale ``cov(P, G) / var(P)`` divides by ``var(P)``, so its
#: error grows as 1 / std(P) and for such a tile would exceed the scale itself.
MIN_TILE_STD = 1e-3


def working_size(
    height: int, width: int, processing_res: int | None, factor: int
) -> tuple[int, int]:
    """Network input size: long edge scaled to ``processing_res`` (None = the image's own),
    both edges rounded to multiples of ``factor`` (at least ``factor``)."""
    scale = 1.0 if processing_res is None else processing_res / max(height, width)
    return (
        max(factor, round(height * scale / factor) * factor),
        max(factor, round(width * scale / factor) * factor),
    )


def default_overlap(tile_size: int) -> int:
    """Overlap used when none is given: a quarter of the tile (pixels)."""
    return tile_size // 4


def axis_tiles(length: int, tile: int, overlap: int, factor: int) -> tuple[int, list[int]]:
    """Tile length and start offsets along one image axis (pixels).

    The tile length is ``tile`` capped at the axis length rounded down to a multiple of
    ``factor`` (the network needs multiples of the VAE factor); the fewest tiles that overlap
    by at least ``overlap`` are spread evenly so the first starts at 0 and the last ends at
    ``length``.
    """
    span = min(tile, length // factor * factor)
    if span >= length:
        return span, [0]
    overlap = min(overlap, span // 2)
    count = max(2, math.ceil((length - overlap) / (span - overlap)))
    return span, [round(i * (length - span) / (count - 1)) for i in range(count)]


def axis_weights(length: int, span: int, starts: list[int]) -> list[Tensor]:
    """Per tile, its (span,) float64 blending weight along one axis: 1 inside, a raised-cosine
    ramp over each overlap with a neighbour, 1 up to the image edges; normalised so the tiles'
    weights sum to 1 at every pixel (already true unless three tiles overlap)."""
    ramps = []
    for i, start in enumerate(starts):
        x = torch.arange(start, start + span, dtype=torch.float64) + 0.5
        w = torch.ones(span, dtype=torch.float64)
        if i > 0:  # rising over [start, end of previous tile)
            lo, hi = start, starts[i - 1] + span
            u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
            w = w * torch.sin(0.5 * math.pi * u) ** 2
        if i < len(starts) - 1:  # falling over [start of next tile, end)
            lo, hi = starts[i + 1], start + span
            u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
            w = w * torch.cos(0.5 * math.pi * u) ** 2
        ramps.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, ramps):
        total[start : start + span] += w
    return [w / total[start : start + span] for start, w in zip(starts, ramps)]


def tile_layout(
    height: int, width: int, tile_size: int, overlap: int, factor: int
) -> list[tuple[int, int, int, int]]:
    """Tiles as ``(top, left, tile_height, tile_width)``, row by row (see :func:`axis_tiles`)."""
    th, tops = axis_tiles(height, tile_size, overlap, factor)
    tw, lefts = axis_tiles(width, tile_size, overlap, factor)
    return [(top, left, th, tw) for top in tops for left in lefts]


def align_to(prediction: Tensor, reference: Tensor) -> Tensor:
    """Least-squares ``s * prediction + b`` closest to ``reference`` (same shape, float64), or
    ``reference`` itself when the fit is ill-conditioned: ``std(prediction) < MIN_TILE_STD``,
    or a scale that is not finite and positive."""
    p, g = prediction.double(), reference.double()
    pc = p - p.mean()
    var = (pc * pc).mean()
    if not var >= MIN_TILE_STD**2:
        return g
    scale = (pc * (g - g.mean())).mean() / var
    if not (math.isfinite(float(scale)) and scale > 0):
        return g
    return scale * pc + g.mean()


def predict_tiled(
    predict_fn: PredictFn,
    image: Tensor,
    processing_res: int,
    tile_size: int,
    overlap: int | None = None,
    factor: int = 8,
) -> Tensor:
    """Relative depth of one large image from a global pass plus aligned, blended tiles
    (method and memory bound in the module docstring).

    Args:
        predict_fn: (B, 3, h, w) float [0, 1] on the CPU -> (B, 1, h, w) in [0, 1] at the same
            size; called with B = 1, once at the working size and once per tile.
        image: (1, 3, H, W) or (3, H, W), uint8 in [0, 255] or float in [0, 1], on the CPU.
        processing_res: long edge (pixels) of the global pass.
        tile_size: tile edge in pixels, a multiple of ``factor``, > ``overlap``.
        overlap: least overlap of neighbouring tiles in pixels (default ``tile_size // 4``).
        factor: the VAE's downsampling factor (8 for SD-2).

    Returns:
        (1, 1, H, W) float32 on the CPU, in [0, 1] (same meaning as ``predict_fn``'s output).

    Raises:
        TilingError: a ``tile_size`` that is not a positive multiple of ``factor``, an
            ``overlap`` outside ``[0, tile_size)``, or a ``processing_res`` that is not a
            positive integer.
    """
    overlap = default_overlap(tile_size) if overlap is None else overlap
    check_tiling(tile_size, overlap, factor)
    if not isinstance(processing_res, int) or processing_res < factor:
        raise TilingError(
            f"tiled prediction needs a processing_res in pixels >= {factor} for its global "
            f"pass (not native size, which would not bound memory), got {processing_res!r}"
        )
    image = image if image.ndim == 4 else image[None]
    if image.shape[0] != 1:
        raise ValueError(f"predict_tiled takes one image, got a batch of {image.shape[0]}")
    height, width = image.shape[-2:]

    def run(x: Tensor) -> Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return predict_fn(x).float().cpu()[0, 0]

    size = working_size(height, width, processing_res, factor)
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    layout = run(x)[None, None]
    del x
    if size != (height, width):
        layout = F.interpolate(
            layout, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    layout = layout[0, 0]
    if min(height, width) < factor:  # no tile fits: the global pass is all there is
        return layout.clamp(0.0, 1.0)[None, None]

    th, tops = axis_tiles(height, tile_size, overlap, factor)
    tw, lefts = axis_tiles(width, tile_size, overlap, factor)
    row_weights = axis_weights(height, th, tops)
    col_weights = axis_weights(width, tw, lefts)
    out = torch.zeros(height, width, dtype=torch.float32)
    for top, wy in zip(tops, row_weights):
        for left, wx in zip(lefts, col_weights):
            window = (slice(top, top + th), slice(left, left + tw))
            tile = run(image[0, :, window[0], window[1]][None])
            aligned = align_to(tile, layout[window])
            out[window] += (wy[:, None] * wx[None, :] * aligned).float()
    return out.clamp(0.0, 1.0)[None, None]


def check_tiling(tile_size: int | None, overlap: int | None, factor: int) -> None:
    """Raise a :class:`TilingError` for a ``tile_size`` (None = off) that is not a positive
    multiple of ``factor`` or an ``overlap`` (None = default) outside ``[0, tile_size)``."""
    if tile_size is None:
        return
    if (
        not isinstance(tile_size, int)
        or isinstance(tile_size, bool)
        or tile_size < factor
        or (tile_size % factor)
    ):
        raise TilingError(
            f"tile_size must be a tile edge in pixels, a positive multiple of the VAE factor "
            f"{factor} (e.g. 768), or null (no tiling); got {tile_size!r}"
        )
    if overlap is not None and not (isinstance(overlap, int) and 0 <= overlap < tile_size):
        raise TilingError(
            f"tile_overlap must be a number of pixels in [0, tile_size={tile_size}), got "
            f"{overlap!r}"
        )
