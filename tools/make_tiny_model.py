"""Write a tiny random-initialised SD-2-layout model folder for CPU runs.

    python tools/make_tiny_model.py --out shards/tiny-sd2 \
        --vae-shards "shards/synthetic/indoor/train-*.tar" "shards/synthetic/outdoor/train-*.tar"

With --vae-shards the tiny VAE is first trained to auto-encode RGB images and normalised depth
maps from those shards (SD-2's real VAE already can; a random one cannot), so decoded depth is
meaningful. The folder loads with ``model_path: <out>`` in every config, through the same code
as a real SD-2 folder.
"""

from __future__ import annotations

import argparse

from dm_lightning.testing.tiny_model import build_tiny_model_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="shards/tiny-sd2", help="output model folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vae-shards", nargs="*", default=[], help="shard patterns to pre-train the VAE on"
    )
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--vae-batch", type=int, default=4, help="samples per source batch")
    args = parser.parse_args(argv)

    build_tiny_model_folder(args.out, args.seed, args.vae_shards, args.vae_steps, args.vae_batch)


if __name__ == "__main__":
    main()
