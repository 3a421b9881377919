"""The global batch knob: accumulation derived from the world size, and the same model on one
rank as on two (issue "Scale out")."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import CONFIGS
from helpers import cli_args
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dm_lightning.cli import main
from dm_lightning.data.collate import collate, sample_to_tensors
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.global_batch import rank_batches_per_epoch, split_global_batch
from dm_lightning.data.schema import decode_sample
from dm_lightning.data.shard_reader import iter_shard
from dm_lightning.data.train_source import TrainSource
from dm_lightning.errors import ConfigError


def test_accumulation_follows_the_world_size():
    # the recipe: 32 = 8 x ranks x accumulation; on more ranks the micro-batch is lowered
    assert split_global_batch(32, 8, devices=1, num_nodes=1) == (8, 4)
    assert split_global_batch(32, 8, devices=2, num_nodes=1) == (8, 2)
    assert split_global_batch(32, 8, devices=2, num_nodes=2) == (8, 1)
    assert split_global_batch(32, 8, devices=8, num_nodes=1) == (4, 1)
    assert split_global_batch(32, 8, devices=8, num_nodes=4) == (1, 1)
    assert split_global_batch(48, 8, devices=4, num_nodes=1) == (6, 2)  # the largest that fits
    with pytest.raises(ConfigError, match=r"global_batch_size=32 samples do not split evenly "
                       r"over world size 3 \(3 devices x 1 nodes\).*multiple of 3"):  # fmt: skip
        split_global_batch(32, 8, devices=3, num_nodes=1)
    with pytest.raises(ConfigError, match="world size 64"):
        split_global_batch(32, 8, devices=8, num_nodes=8)


def test_an_epoch_is_the_same_optimizer_steps_on_any_world_size():
    # 8000 micro-batches of a one-rank run at 8 per batch, global 32: 2000 steps per epoch
    assert rank_batches_per_epoch(8000, 8, 32, accumulation=4) == 8000  # 1 rank
    assert rank_batches_per_epoch(8000, 8, 32, accumulation=1) == 2000  # 4 ranks
    assert rank_batches_per_epoch(3, 2, 4, accumulation=2) == 4  # rounded up to whole steps


def test_global_batch_needs_one_micro_batch_size(shards):
    sources = [
        TrainSource("a", str(shards / "indoor" / "train-*.tar"), batch_size=2),
        TrainSource("b", str(shards / "outdoor" / "train-*.tar"), batch_size=4),
    ]
    with pytest.raises(ConfigError, match=r"one micro-batch size .*'a': 2, 'b': 4"):
        DepthDataModule(train=sources, global_batch_size=8)
    with pytest.raises(ConfigError, match="data.global_batch_size must be an integer >= 1"):
        DepthDataModule(train=sources[:1], global_batch_size=0)


def test_fit_derives_the_accumulation(tiny_model, data_config, tmp_path):
    # micro-batch 2 (the test data config), global 4, one rank: 2 micro-batches per step
    args = cli_args(
        "fit", [CONFIGS / "tiny" / "stage2.yaml", data_config], tiny_model, tmp_path,
        data__init_args__global_batch_size=4, data__init_args__batches_per_epoch=4,
        trainer__max_steps=3, trainer__limit_val_batches=0,
    )  # fmt: skip
    from dm_lightning.cli import run_cli

    cli = run_cli(args)
    trainer = cli.trainer
    assert trainer.accumulate_grad_batches == 2
    assert trainer.global_step == 3
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6
    # batches_per_epoch 4 one-rank micro-batches = 2 optimizer steps per epoch
    assert trainer.num_training_batches == 4


def test_global_batch_and_accumulation_both_set_is_an_error(
    tiny_model, data_config, tmp_path, capsys
):
    args = cli_args(
        "fit", [CONFIGS / "tiny" / "stage2.yaml", data_config], tiny_model, tmp_path,
        data__init_args__global_batch_size=8, trainer__accumulate_grad_batches=3,
        trainer__max_steps=1,
    )  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trainer.accumulate_grad_batches=3 and data.global_batch_size=8" in err
    assert "the global batch gives 4" in err


# ---- the same model on one rank and on two ----------------------------------------------
class FixedSamples(Dataset):
    """The first ``count`` samples of some shards, in file order, every pixel valid (so that a
    micro-batch's masked mean weighs each sample the same, whatever the grouping)."""

    def __init__(self, pattern: str, count: int) -> None:
        import glob

        items = []
        for url in sorted(glob.glob(pattern)):
            for raw in iter_shard(url):
                items.append(sample_to_tensors(decode_sample(raw)))
        self.items = items[:count]
        for item in self.items:
            assert bool((item["depth"] > 0).all())
            item["valid"] = torch.ones_like(item["valid"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class FixedSamplesData(DepthDataModule):
    """DepthDataModule (so the global batch is applied as in a real run) training on an
    ordered map-style loader: a DistributedSampler deals sample i to rank i % 2, so
    one optimizer step sees the same 4 samples on one rank (2 micro-batches of 2) as on two."""

    def __init__(self, pattern: str, **kwargs) -> None:
        super().__init__(train=[TrainSource("indoor", pattern, batch_size=2)], **kwargs)
        self.pattern = pattern

    def train_dataloader(self) -> DataLoader:
        dataset = FixedSamples(self.pattern, 12)
        # In file order on each rank (Lightning's own distributed sampler would shuffle).
        ranks = self.trainer.world_size
        sampler = DistributedSampler(dataset, shuffle=False) if ranks > 1 else None
        return DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate)


class LossCurve(L.Callback):
    """Per rank, the loss of every micro-batch with its optimizer step, written as JSON."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.rows: list[tuple[int, float]] = []
        self.step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step  # the optimizer step this micro-batch counts towards

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the task keeps its last micro-batch loss un-normalised (outputs["loss"] is divided
        # by the accumulation)
        self.rows.append((self.step, float(pl_module._loss_parts["loss"]), list(batch["key"])))

    def on_fit_end(self, trainer, pl_module):
        path = f"{self.folder}/loss-{trainer.world_size}-rank{trainer.global_rank}.json"
        with open(path, "w") as f:
            json.dump(self.rows, f)


def _fit(world: int, tiny_model, shards, tmp_path) -> dict[str, torch.Tensor]:
    from dm_lightning import Stage2

    L.seed_everything(0)
    data = FixedSamplesData(str(shards / "indoor" / "train-*.tar"), global_batch_size=4)
    model = Stage2(str(tiny_model), fourier=True, lr=1e-3, warmup_steps=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp_spawn" if world > 1 else "auto",
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[LossCurve(str(tmp_path))],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return {k: v.detach().clone() for k, v in model.net.unet.state_dict().items()}


def _initial_unet(tiny_model) -> dict[str, torch.Tensor]:
    """The U-Net weights ``_fit`` starts from (the FE block is initialised from the seed)."""
    from dm_lightning import Stage2

    L.seed_everything(0)
    return dict(Stage2(str(tiny_model), fourier=True).net.unet.state_dict())


def _curve(tmp_path, world: int) -> list[float]:
    """Mean loss per optimizer step over the micro-batches of all ranks."""
    per_step: dict[int, list[float]] = {}
    for rank in range(world):
        rows = json.loads((tmp_path / f"loss-{world}-rank{rank}.json").read_text())
        for step, loss, *_ in rows:
            per_step.setdefault(step, []).append(loss)
    assert all(len(v) == 2 for v in per_step.values()), per_step  # 2 micro-batches per step
    return [sum(v) / len(v) for _, v in sorted(per_step.items())]


def test_two_ranks_follow_the_one_rank_loss_curve(tiny_model, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = _fit(1, tiny_model, shards, tmp_path)
    two = _fit(2, tiny_model, shards, tmp_path)
    curve1, curve2 = _curve(tmp_path, 1), _curve(tmp_path, 2)
    assert len(curve1) == len(curve2) == 3
    # Same samples per step, same math; only the float32 summation order differs (one rank
    # accumulates two micro-batches, two ranks all-reduce them), and that order differs by CPU
    # and thread count: ~1e-7 relative per loss, far inside 1e-4.
    assert curve1 == pytest.approx(curve2, rel=1e-4)
    assert curve1[0] != pytest.approx(curve1[2], rel=1e-3)  # it trained
    # The weights, measured against the update itself (float64 norms over all U-Net weights):
    # a grouping error (other samples in a step) changes the update by O(1) of its norm.
    # Rounding does not, but Adam divides each gradient by its own magnitude, so an element
    # whose gradient cancels to rounding level can move by a good part of a step: an
    # element-wise bound is machine-dependent (1.4e-7 here, 1.1e-5 on an AMD EPYC), while
    # the norm ratio stays near 1e-6 on both; 1e-2 keeps four orders of margin either way.
    init = _initial_unet(tiny_model)
    diff = torch.cat([(one[k].double() - two[k].double()).flatten() for k in one])
    update = torch.cat([(one[k].double() - init[k].double()).flatten() for k in one])
    assert float(update.norm()) > 0
    assert float(diff.norm() / update.norm()) < 1e-2


def test_the_recipe_sets_the_global_batch_not_the_accumulation(capsys):
    import yaml

    configs = [CONFIGS / "stage1.yaml", CONFIGS / "data" / "hypersim_vkitti.yaml"]
    with pytest.raises(SystemExit):
        main(cli_args("fit", configs, extra=["--print_config"]))
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["global_batch_size"] == 32
    assert printed["data"]["init_args"]["train"][0]["batch_size"] == 8
    assert printed["trainer"]["accumulate_grad_batches"] == 1  # derived at set-up


def test_eight_ranks_lower_the_micro_batch(shards):
    from types import SimpleNamespace

    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=8)
    data = DepthDataModule(train=[source], global_batch_size=32, batches_per_epoch=8000)
    trainer = SimpleNamespace(num_devices=8, num_nodes=1, world_size=8, accumulate_grad_batches=1)
    assert data.apply_global_batch(trainer) == 1
    assert source.batch_size == 4 and trainer.accumulate_grad_batches == 1  # 4 x 8 x 1 = 32
    # the epoch keeps its optimizer steps: 8000 x 8 / 32 = 2000 steps of one micro-batch each
    assert rank_batches_per_epoch(8000, data.configured_micro_batch, 32, data.accumulation) == 2000
