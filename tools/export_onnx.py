"""Export a DepthMaster model to one ONNX graph and check it under onnxruntime.

    python tools/export_onnx.py runs/tiny/stage2/version_0/export --out depth.onnx \\
        --check photos/a.jpg photos/b.jpg

The graph takes ``image`` (B, 3, H, W) float32 RGB in [0, 1] (uint8 / 255) and returns
``depth`` (B, 1, H, W) float32 relative depth in [0, 1] (1 = near for the default target),
DepthMaster's prediction at that size, FE block included. Batch, H and W are dynamic; H and W
must be multiples of the VAE factor (8 for SD-2). Other sizes: run it through
``predict --model.init_args.model_path depth.onnx`` or ``predict_images("depth.onnx", ...)``,
which resize to the working size (long edge ``processing_res``, edges rounded to multiples of
8) on the host, run the graph, resize back and clip to [0, 1], as PyTorch's predict does.
Graphs over 2 GB (SD-2 size) keep their weights in ``<out>.data`` beside the ``.onnx``.

After writing, the graph runs under onnxruntime on each --check image (default: a synthetic
199x263 image) at the model's processing resolution, and the largest absolute difference to
PyTorch on the [0, 1] prediction is printed; above --tolerance the tool exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from dm_lightning.tool_cli import run_tool, tool_parser

PROG = "export_onnx"
#: The documented bound on |onnxruntime - PyTorch| on the [0, 1] prediction.
DEFAULT_TOLERANCE = 1e-4


def build_parser() -> argparse.ArgumentParser:
    from dm_lightning.inference.onnx_export import DEFAULT_OPSET

    parser = tool_parser(PROG, __doc__)
    parser.add_argument("model", help="model folder, hub id or Stage1/Stage2 .ckpt")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, >= 18 (default %(default)s)"
    )
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip onnxscript's graph optimiser (a faster export; onnxruntime still optimises "
        "when it loads the graph)",
    )
    parser.add_argument(
        "--check", nargs="*", default=None, metavar="IMAGE", help="images to compare on"
    )
    parser.add_argument(
        "--processing-res",
        default=None,
        metavar="N",
        help="long edge (pixels) or 'native' for the check; default: the model's recorded one, "
        "else 768",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted difference to PyTorch (default %(default)g)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Export, check, print; 0 if every check is within the tolerance, else 1."""
    from dm_lightning.data.photos import read_photo
    from dm_lightning.inference.onnx_export import (
        check_export,
        check_export_target,
        check_image,
        export_onnx,
    )
    from dm_lightning.models.loading import load_depthmaster
    from dm_lightning.models.resolution import check_processing_res, network_res

    check_export_target(args.out, args.opset)
    net = load_depthmaster(args.model).eval()
    res = args.processing_res
    res = int(res) if res is not None and res.isdigit() else res
    res = check_processing_res(res, net.latent_factor, "--processing-res")
    res = res or net.facts.processing_res
    start = time.perf_counter()
    # the graph records what the model records (net.facts), as an export's dm_lightning.json
    out = export_onnx(net, args.out, opset=args.opset, optimize=not args.no_optimize)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    if args.check:
        images = {
            path: torch.from_numpy(read_photo(path).copy()).permute(2, 0, 1)[None]
            for path in args.check
        }
    else:
        images = {"synthetic 199x263 image": check_image()}
    worst = 0.0
    for name, diff in check_export(net, out, images, network_res(res)).items():
        print(f"max |onnxruntime - PyTorch| on {name} at processing_res {res}: {diff:.2e}")
        worst = max(worst, diff)
    if worst > args.tolerance:
        print(
            f"{PROG}: difference {worst:.2e} over the tolerance {args.tolerance:g}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; 0 on success, 1 when onnxruntime
    differs from PyTorch beyond --tolerance, 2 on bad input (one line
    ``export_onnx: error: ...`` on stderr)."""
    status, result = run_tool(PROG, build_parser(), run, argv)
    return status or result


if __name__ == "__main__":
    sys.exit(main())
