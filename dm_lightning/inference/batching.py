"""One predict call for a batch of image files, whatever their sizes: same-size batches in one
forward, mixed sizes grouped by working size, or each image tiled (:func:`predict_batch`).

``predict_step`` and :func:`~dm_lightning.inference.api.predict_images` both call it, so the
CLI and the API take the same path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dm_lightning.inference.tiling import predict_tiled
from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.pipeline_depthmaster import resize_bilinear


def predict_batch(
    net: DepthMaster,
    rgb: Tensor | list[Tensor],
    processing_res: int | None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> Tensor | list[Tensor]:
    """Relative depth in [0, 1] of a batch of images, each at its own size.

    Args:
        net: the network (eval mode, on its device).
        rgb: (B, 3, H, W) uint8 (one size: :func:`~dm_lightning.data.predict.collate_predict`
            of same-size images), or a list of (3, H_i, W_i) uint8 of mixed sizes.
        processing_res: long edge (pixels) the network runs at; None = each image's own size.
        tile_size: None = one pass per image; else tiled
            (:func:`~dm_lightning.inference.tiling.predict_tiled`, needs a ``processing_res``).
        tile_overlap: least tile overlap in pixels (default a quarter tile).

    Returns:
        (B, 1, H, W) float for a same-size tensor batch without tiling (``net.predict``
        exactly as before); else a list of (1, H_i, W_i) float32 on the CPU, in input order.

    Mixed sizes: images whose working size (``net.working_size``) is the same are resized to
    it one by one, as :meth:`DepthMaster.predict` does, run as one batch, and resized back to
    their own sizes, so results equal batch size 1 up to float32 batched-convolution rounding
    (a group of one runs ``net.predict`` itself: identical).
    """
    if tile_size is not None:
        images = list(rgb)
        return [
            predict_tiled(
                lambda x: net.predict(x, None),
                image,
                processing_res,  # type: ignore[arg-type]  # checked by predict_tiled
                tile_size,
                tile_overlap,
                net.latent_factor,
            )[0].cpu()
            for image in images
        ]
    if isinstance(rgb, Tensor):
        return net.predict(rgb, processing_res)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(rgb):
        groups.setdefault(net.working_size(*image.shape[-2:], processing_res), []).append(i)
    out: list[Tensor | None] = [None] * len(rgb)
    for size, members in groups.items():
        if len(members) == 1:
            i = members[0]
            out[i] = net.predict(rgb[i][None], processing_res)[0].float().cpu()
            continue
        batch = torch.cat([_resized(rgb[i], size) for i in members])
        depth = net.predict(batch, None).float()  # already at the working size
        for i, d in zip(members, depth):
            h, w = rgb[i].shape[-2:]
            if (h, w) != size:
                d = resize_bilinear(d[None], (h, w))[0]
            # Clip after the last resize: antialiased bilinear overshoots by float rounding.
            out[i] = d.clamp(0.0, 1.0).cpu()
    return out  # type: ignore[return-value]


def _resized(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) uint8 -> (1, 3, *size) float in [0, 1], resized as DepthMaster.predict does."""
    x = image[None].float() / 255.0
    if tuple(x.shape[-2:]) != size:
        x = resize_bilinear(x, size)
    return x
