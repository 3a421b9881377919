"""Export a DepthMaster to one ONNX graph: image in, relative depth out, FE block included.

    from dm_lightning.inference.onnx_export import export_onnx
    export_onnx("runs/tiny/stage2/version_0/export", "depth.onnx")

The graph (input ``image``, output ``depth``):

- ``image``: (B, 3, H, W) float32 RGB in [0, 1] (uint8 / 255). H and W must be multiples of
  the VAE factor (8 for SD-2; ``dm_lightning.latent_factor`` in the graph's metadata), any
  such size and any batch through one graph (dynamic axes ``batch``, ``height``, ``width``).
  Float, not uint8, because the host resizes to the working size first and the resize works
  in float (quantising it would move the result away from PyTorch's).
- ``depth``: (B, 1, H, W) float32 in [0, 1], exactly what ``DepthMaster.predict`` computes at
  that size (1 = near for the default target), before any resize back.

Other sizes go through :class:`~dm_lightning.inference.onnx_runtime.OnnxDepthModel`, which
does on the host what :meth:`DepthMaster.predict` does around the network: resize to the
working size (long edge ``processing_res``, edges rounded to multiples of the factor,
antialiased bilinear), run the graph, resize back, clip to [0, 1].

Exported with ``torch.onnx.export(..., dynamo=True)``: the TorchScript exporter has no
``fft_rfft2``. The FE block's phase is written so the graph computes PyTorch's numbers
(:func:`~dm_lightning.models.fourier.spectrum_phase`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_lightning.errors import ConfigError
from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.models.onnx_metadata import INPUT_NAME, META_KEY, OUTPUT_NAME
from dm_lightning.models.unet_hooks import has_fourier_enhancement

#: ONNX opset the graph is written in (``torch.onnx``'s dynamo exporter's default, 18).
DEFAULT_OPSET = 18


class DepthGraph(nn.Module):
    """What the ONNX graph computes: ``DepthMaster.predict`` at the working size.

    (B, 3, H, W) float RGB in [0, 1] -> encode -> U-Net (timestep 1, empty prompt) -> decode
    -> channel mean -> clip to [-1, 1] -> (B, 1, H, W) in [0, 1]; H, W multiples of the VAE
    factor.
    """

    def __init__(self, net: DepthMaster) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        latent = self.net.predict_latent(self.net.encode(image * 2.0 - 1.0))
        raw = self.net.decode(latent).clamp(-1.0, 1.0)
        return ((raw + 1.0) / 2.0).clamp(0.0, 1.0)


@contextlib.contextmanager
def upsampling_to_skip_sizes(net: DepthMaster) -> Iterator[None]:
    """Make the U-Net take its any-size upsampling branch while it is traced.

    diffusers' U-Net chooses in Python, from the input size, between upsampling by 2 (sizes
    that are multiples of ``2 ** num_upsamplers``) and upsampling to each skip connection's
    size (other sizes). A trace records only the branch its sample took, and the by-2 branch
    fails on the other sizes. A factor no latent size reaches makes every size take the
    skip-size branch, which gives the same numbers for multiples too (nearest interpolation
    to twice the size is upsampling by 2), so one graph serves every multiple of the VAE
    factor."""
    unet = net.unet
    saved = unet.num_upsamplers
    unet.num_upsamplers = 62  # 2 ** 62: larger than any latent edge
    try:
        yield
    finally:
        unet.num_upsamplers = saved


def graph_metadata(
    net: DepthMaster, processing_res: int | None, target: str | None
) -> dict[str, object]:
    """The facts the onnxruntime backend needs without the model folder, kept as JSON under
    the graph's ``metadata_props`` key :data:`META_KEY` (as an export's ``dm_lightning.json``):
    VAE factor, recorded ``processing_res`` and target, whether the FE block is in, and the
    graph's input/output contract in words."""
    return {
        "latent_factor": net.latent_factor,
        "processing_res": processing_res,
        "target": target,
        "fourier_enhancement": has_fourier_enhancement(net.unet),
        "io": (
            f"{INPUT_NAME}: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of "
            f"{net.latent_factor}; {OUTPUT_NAME}: (B, 1, H, W) float32 relative depth in [0, 1]"
        ),
    }


def check_export_target(out: str | Path, opset: int) -> Path:
    """``out`` as a Path if it names an ``.onnx`` file and ``opset`` is >= 18, else raise
    :class:`ConfigError` (before a model is loaded)."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"ONNX output {out}: expected a file name ending in .onnx")
    if opset < 18:
        raise ConfigError(f"opset {opset}: the FFTs of the FE block need ONNX opset >= 18")
    return out


def export_onnx(
    model: str | Path | DepthMaster,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    processing_res: int | None = None,
    target: str | None = None,
) -> Path:
    """Write ``model`` as one ONNX graph at ``out`` (see the module docstring for its contract).

    Args:
        model: a model folder, hub id or ``.ckpt`` (loaded with
            :func:`~dm_lightning.load_depthmaster`; its recorded ``processing_res`` and target
            go into the graph's metadata), or a loaded fp32 :class:`DepthMaster`.
        out: the ``.onnx`` file to write (its folder is created). Graphs over 2 GB (SD-2 size)
            keep their weights next to it in ``<out>.data``, as ONNX requires.
        opset: ONNX opset (>= 18: the exporter's DFT translation needs it).
        optimize: run onnxscript's graph optimiser after the export (constant folding, fewer
            nodes); the numbers do not change beyond float rounding.
        processing_res, target: predict's default long edge and the training target to
            record in the graph; None: the ones the model records (``net.facts``).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``opset`` below 18, ``out`` not ending in ``.onnx``, a model held in
            another dtype than float32, or one that samples (Marigold: not one pass).
    """

    out = check_export_target(out, opset)
    net = model if isinstance(model, DepthMaster) else load_depthmaster(model)
    if not net.single_pass:
        raise ConfigError(
            f"{type(net).__name__} samples (DDIM steps from noise, then an ensemble): one ONNX "
            "graph holds a single deterministic pass (DepthMaster, E2E-FT, Lotus-D); run it "
            "with PyTorch"
        )
    processing_res = processing_res or net.facts.recorded_processing_res
    target = target or net.facts.recorded_target
    dtypes = {p.dtype for p in net.parameters()}
    if dtypes != {torch.float32}:
        raise ConfigError(
            f"the model to export holds {sorted(map(str, dtypes))} weights; export a float32 "
            "model (load it again, or call .float())"
        )
    was_training = net.training
    graph = DepthGraph(net).eval()
    f = net.latent_factor
    # Batch 2, and a latent of 3 x 5 cells at the U-Net's deepest level: a size of 1 anywhere
    # in the trace (batch or any level's edge) would be specialised to 1 in the graph.
    deepest = 2 ** (len(net.unet.config.block_out_channels) - 1)
    sample = torch.rand(
        2, 3, 3 * deepest * f, 5 * deepest * f, device=next(net.parameters()).device
    )
    height = torch.export.Dim("height_blocks", min=1)
    width = torch.export.Dim("width_blocks", min=1)
    # Dim.DYNAMIC: diffusers' `shape[0] >= 64` check (a .contiguous()) bounds the batch while
    # tracing; it changes no number, and a named Dim would make that bound an error.
    shapes = {"image": {0: torch.export.Dim.DYNAMIC, 2: f * height, 3: f * width}}
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), upsampling_to_skip_sizes(net), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
            program = torch.onnx.export(
                graph,
                (sample,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                optimize=optimize,
                verbose=False,
            )
    finally:
        net.train(was_training)
    facts = graph_metadata(net, processing_res, target)
    program.model.metadata_props[META_KEY] = json.dumps(facts)
    program.save(str(out))
    return out


def check_image(seed: int = 0, height: int = 199, width: int = 263) -> Tensor:
    """A photo-like check input without a file: smooth seeded colour fields with edges,
    (1, 3, ``height``, ``width``) uint8. Odd default sizes, so the host resize runs."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    edges = (torch.rand(1, 3, 3, 4, generator=generator) > 0.5).float()
    blocks = F.interpolate(edges, size=(height, width), mode="nearest")
    return ((0.7 * smooth + 0.3 * blocks).clamp(0, 1) * 255).round().to(torch.uint8)


def check_export(
    net: DepthMaster,
    graph: str | Path,
    images: dict[str, Tensor],
    processing_res: int | str | None,
) -> dict[str, float]:
    """Max absolute difference between onnxruntime and PyTorch on the [0, 1] prediction
    (``predict`` of each, host resize included), per image.

    Args:
        net: the exported network (float32, any device).
        graph: its ``.onnx`` file.
        images: name -> (1, 3, H, W) uint8 or float in [0, 1].
        processing_res: as :meth:`DepthMaster.predict` (None: native size).
    """
    from dm_lightning.inference.onnx_runtime import OnnxDepthModel

    session = OnnxDepthModel(graph)
    was_training = net.training
    net.eval()
    try:
        return {
            name: float(
                (session.predict(image, processing_res) - net.predict(image, processing_res).cpu())
                .abs()
                .max()
            )
            for name, image in images.items()
        }
    finally:
        net.train(was_training)
