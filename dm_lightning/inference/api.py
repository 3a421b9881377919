"""Depth maps of image files from Python, without Lightning: :func:`predict_images`.

    from dm_lightning import predict_images
    summary = predict_images("runs/tiny/stage2/version_0/export", "photos/", "depth/")
    print(summary.written, summary.skipped)

Writes the same files as ``dm-lightning predict --config configs/predict.yaml``
(:mod:`dm_lightning.inference.outputs`: ``<key>.npy``, ``<key>.png``, ``<key>_color.png``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dm_lightning.data.predict import ImageFolder, collate_predict
from dm_lightning.errors import ConfigError
from dm_lightning.inference.batching import predict_batch
from dm_lightning.inference.onnx_runtime import OnnxDepthModel, is_onnx_path
from dm_lightning.inference.outputs import (
    BackgroundWriter,
    PredictionSummary,
    refuse_writing_over_inputs,
)
from dm_lightning.inference.precision import cast_for_inference, inference_dtype
from dm_lightning.inference.tiling import check_tiling
from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.models.resolution import check_processing_res, network_res

log = logging.getLogger(__name__)


def load_for_inference(model: str | Path) -> DepthMaster | OnnxDepthModel:
    """The network of a model folder, hub id or ``.ckpt`` (see
    :func:`~dm_lightning.models.loading.load_depthmaster`), or of an ``.onnx`` graph (an
    :class:`~dm_lightning.inference.onnx_runtime.OnnxDepthModel`, run with onnxruntime), in
    eval mode on the CPU, with the facts the model records as ``facts`` (its target, so
    whether 1 means near, and predict's default long edge)."""
    net = OnnxDepthModel(model) if is_onnx_path(model) else load_depthmaster(model)
    return net.eval()


def predict_images(
    model: str | Path | DepthMaster | OnnxDepthModel,
    inputs: str | Path,
    output_dir: str | Path,
    processing_res: int | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    near_is_one: bool | None = None,
    progress: bool = True,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    dtype: str | torch.dtype | None = None,
) -> PredictionSummary:
    """Predict relative depth for image files and write the ``.npy``, 16-bit PNG and colour PNG
    of each (:func:`~dm_lightning.inference.outputs.write_depth_outputs`) under
    ``output_dir``, mirroring the inputs' relative paths (``sub/img.jpg`` ->
    ``output_dir/sub/img.npy``, ``img.png``, ``img_color.png``).

    Images stream through a :class:`~torch.utils.data.DataLoader` over
    :class:`~dm_lightning.data.predict.ImageFolder` (file names are listed up front, pixels
    read per batch), so memory does not grow with the number of images. Unreadable files are
    skipped, each named in a warning, and listed in the summary.

    Args:
        model: a model folder or hub id (an export, the released DepthMaster model), a
            ``Stage1`` / ``Stage2`` ``.ckpt``, or a loaded :class:`DepthMaster` (used as it is,
            on its device unless ``device`` is given); an ``.onnx`` graph
            (:mod:`~dm_lightning.inference.onnx_export`) or a loaded
            :class:`~dm_lightning.inference.onnx_runtime.OnnxDepthModel` runs with onnxruntime
            (its providers decide the device).
        inputs: one image file, a folder (searched recursively) or a glob (``**`` recurses).
        output_dir: folder for the files (created).
        processing_res: long edge (pixels, >= the VAE factor) the network runs at;
            ``"native"`` = each image's own size; None = the one recorded with the model
            (its ``facts``: an export's ``dm_lightning.json``, a checkpoint's
            hyper-parameters), else 768
            (:data:`~dm_lightning.models.pipeline_depthmaster.DEFAULT_PROCESSING_RES`; a
            :class:`DepthMaster` built in memory records none). Outputs are at the input size
            either way.
        device: e.g. ``"cuda"``, ``"cpu"``; default CUDA when available, else the CPU.
        batch_size: images per forward pass; images of different sizes may share a batch
            (those of one working size run together, results as with batch size 1).
        num_workers: DataLoader processes decoding images (0 = in this process).
        near_is_one: whether the model's 1 means near (colours put near in red); default from
            the model's recorded target (``facts``; True when it records none).
        progress: show a progress bar over the images and print the closing summary.
        tile_size: None (default): one pass per image. A tile edge in pixels (a multiple of
            the VAE factor, e.g. the processing resolution): a global pass at
            ``processing_res`` plus overlapping full-detail tiles aligned to it and blended
            (:mod:`dm_lightning.inference.tiling`), for images much larger than
            ``processing_res``; device memory bounded by the tile, not the image.
        tile_overlap: least overlap of neighbouring tiles in pixels (default a quarter tile).
        dtype: ``"bf16"`` / ``"fp16"`` hold the U-Net and VAE encoder in half precision (the
            decode and the FE block stay fp32; :mod:`dm_lightning.inference.precision`);
            None / ``"fp32"``: as loaded. A loaded :class:`DepthMaster` is cast in place.

    Returns:
        :class:`~dm_lightning.inference.outputs.PredictionSummary`: output folder, number
        written, skipped ``(path, reason)``.

    Raises:
        MissingPathError: no image at ``inputs``, or a missing model.
        ConfigError: a ``processing_res`` that is not a long edge >= the VAE factor, a
            ``batch_size`` below 1, an output file that would replace an input image (the
            output folder is the input folder), a bad ``tile_size``, ``tile_overlap`` or
            ``dtype``, or tiling with ``processing_res="native"``.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ImageFolder(str(inputs))
    refuse_writing_over_inputs(output_dir, dataset.keys, dataset.files)
    if isinstance(model, (OnnxDepthModel, DepthMaster)):
        net = model
    else:
        net = load_for_inference(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_processing_res(processing_res, net.latent_factor, "processing_res")
    check_tiling(tile_size, tile_overlap, net.latent_factor)
    if processing_res is None:
        processing_res = net.facts.processing_res
    if tile_size is not None and network_res(processing_res) is None:
        raise ConfigError(
            "tile_size needs a processing_res in pixels for the global pass, not 'native'"
        )
    cast_for_inference(net, inference_dtype(dtype, "dtype"))
    near = net.facts.near_is_one if near_is_one is None else near_is_one
    if device is not None:
        net = net.to(device)
    was_training = net.training
    net.eval()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary(output_dir=output)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_predict,
    )
    bar = tqdm(total=len(dataset), desc="Predicting", unit="img", disable=not progress)
    try:
        with torch.inference_mode(), BackgroundWriter(output, near) as writer:
            for batch in loader:
                for path, reason in batch["skipped_files"]:
                    log.warning("skipped unreadable image %s: %s", path, reason)
                    summary.skipped.append((path, reason))
                if batch["rgb"] is not None:
                    depth = predict_batch(
                        net, batch["rgb"], network_res(processing_res), tile_size, tile_overlap
                    )
                    for key, values in zip(batch["key"], depth):
                        writer.submit(key, values.float().cpu())
                        summary.written += 1
                bar.update(len(batch["key"]) + len(batch["skipped_files"]))
    finally:
        bar.close()
        net.train(was_training)
    if progress:
        print(f"[dm_lightning] {summary}")
    return summary
