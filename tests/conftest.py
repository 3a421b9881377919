"""Shared fixtures: tiny synthetic shards and a tiny model folder, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dm_lightning.data.synthetic import generate
from dm_lightning.testing.tiny_model import make_tiny_depthmaster, save_tiny_model

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Synthetic shards: 16 train, 8 val and 8 test samples per source, 8 per shard."""
    out = tmp_path_factory.mktemp("shards")
    generate(str(out), counts={"train": 16, "val": 8, "test": 8}, samples_per_shard=8, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-initialised tiny SD-2-layout folder saved through the real save path."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd2", make_tiny_depthmaster(0))


@pytest.fixture(scope="session")
def data_config(shards, tmp_path_factory) -> Path:
    """configs/data/synthetic.yaml pointed at the test shards, with small epochs."""
    cfg = yaml.safe_load((CONFIGS / "data" / "synthetic.yaml").read_text())
    args = cfg["data"]["init_args"]
    for source in args["train"]:
        source["shards"] = source["shards"].replace("shards/synthetic", str(shards))
        source["batch_size"] = 2
    for split in ("val", "test"):
        args[split] = {
            k: v.replace("shards/synthetic", str(shards)) for k, v in args[split].items()
        }
    args.update(batches_per_epoch=3, eval_batch_size=4, num_workers=0)
    path = tmp_path_factory.mktemp("configs") / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
