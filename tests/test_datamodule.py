"""Streaming data: per-batch mixing, seeding, rank/worker splitting, corrupt-data handling."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import signal
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, write_raw_tar

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.synthetic import generate
from dm_lightning.data.train_source import TrainSource
from dm_lightning.errors import ConfigError, DataError, MissingPathError


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """4 train shards of 4 samples per source (enough for 2 ranks x 2 workers), 2 val shards."""
    out = tmp_path_factory.mktemp("many_shards")
    generate(
        str(out),
        counts={"train": 16, "val": 6, "test": 4},
        samples_per_shard=4,
        seed=3,
        progress=False,
    )
    return out


def datamodule(root: Path, **kw) -> DepthDataModule:
    train = [
        TrainSource("indoor", str(root / "indoor" / "train-*.tar"), probability=0.9, batch_size=2),
        TrainSource(
            "outdoor", str(root / "outdoor" / "train-*.tar"), probability=0.1, batch_size=2
        ),
    ]
    val = {
        "indoor": str(root / "indoor" / "val-*.tar"),
        "outdoor": str(root / "outdoor" / "val-*.tar"),
    }
    args = dict(train=train, val=val, batches_per_epoch=20, num_workers=0, shuffle_buffer=4)
    args.update(kw)
    return DepthDataModule(**args)


def keys_of(loader) -> list[tuple[str, ...]]:
    return [tuple(b["key"]) for b in loader]


def test_batches_come_from_one_source_at_the_configured_rate(many_shards):
    loader = datamodule(many_shards, batches_per_epoch=300).train_dataloader()
    assert len(loader) == 300
    sources = Counter()
    for batch in loader:
        assert len(set(batch["source"])) == 1  # every micro-batch from a single source
        assert batch["rgb"].shape[0] == 2
        sources[batch["source"][0]] += 1
    # Binomial(300, 0.9): std 0.017; 0.05 is ~3 std (and the seed is fixed).
    assert abs(sources["synthetic_indoor"] / 300 - 0.9) < 0.05
    assert sum(sources.values()) == 300


def test_outdoor_batch_shapes_and_flip_consistency(many_shards):
    dm = datamodule(many_shards, hflip=1.0)
    seen = set()
    for packed in dm.train_dataloader():
        assert packed["flip"].all()
        # what Lightning has the DataModule do on the device after the transfer
        batch = dm.on_after_batch_transfer(packed, 0)
        seen.add(tuple(batch["rgb"].shape[-2:]))
        # depth 0 (sky) is never valid, whatever the flip did
        assert not bool((batch["valid"] & (batch["depth"] <= 0)).any())
        # RGB, depth and mask are all mirrored copies of the packed rasters
        assert torch.equal(batch["rgb"], packed["rgb"].permute(0, 3, 1, 2).flip(-1))
        units = packed["depth_units"].to(torch.int32) & 0xFFFF
        assert torch.equal(batch["depth"] > 0, (units > 0).flip(-1))
    assert (96, 128) in seen


def test_seeded_streams_are_reproducible_and_epochs_differ(many_shards):
    a = datamodule(many_shards, seed=7).train_dataloader()
    b = datamodule(many_shards, seed=7).train_dataloader()
    c = datamodule(many_shards, seed=8).train_dataloader()
    first_a, first_b, first_c = keys_of(a), keys_of(b), keys_of(c)
    assert first_a == first_b
    assert first_a != first_c
    assert keys_of(a) != first_a  # the next epoch draws differently


def _rank_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    # This child was spawned; its DataLoader workers should fork (as on a normal Linux run)
    # rather than spawn, which would re-import this test module in every worker.
    mp.set_start_method("fork", force=True)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        dm = datamodule(Path(root), num_workers=2, batches_per_epoch=9)
        train = [list(b["key"]) for b in dm.train_dataloader()]
        val = [[list(b["key"]) for b in loader] for loader in dm.val_dataloader()]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"train": train, "val": val}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_two_workers(many_shards, tmp_path):
    mp.start_processes(
        _rank_worker,
        args=(2, free_port(), str(many_shards), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Same number of training batches on each rank, and disjoint samples.
    assert [len(r["train"]) for r in ranks] == [9, 9]
    samples = [{k for batch in r["train"] for k in batch} for r in ranks]
    assert samples[0] and samples[1] and not samples[0] & samples[1]
    # Validation: every sample of each split exactly once over both ranks.
    for split, expected in enumerate((6, 6)):
        keys = [k for r in ranks for batch in r["val"][split] for k in batch]
        assert len(keys) == expected and len(set(keys)) == expected


def _corrupt_copy(src: Path, dst: Path) -> str:
    """Copy a shard, replacing the depth PNG of its second sample by garbage; returns its key."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        members = tin.getmembers()
        keys = sorted({m.name.split(".")[0] for m in members})
        bad = keys[1]
        for m in members:
            data = tin.extractfile(m).read()
            if m.name == f"{bad}.depth.png":
                data = b"not a png"
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return bad


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(many_shards, tmp_path):
    shards = sorted((many_shards / "indoor").glob("val-*.tar"))
    bad_key = _corrupt_copy(shards[0], tmp_path / "val-000000.tar")
    truncated = tmp_path / "val-000001.tar"
    with tarfile.open(shards[1]) as tin:
        last = tin.getmembers()[-1]
    # Cut in the middle of the last member's data (not just the zero padding at the end).
    truncated.write_bytes(shards[1].read_bytes()[: last.offset_data + last.size // 2])
    dm = datamodule(many_shards, val={"x": str(tmp_path / "val-*.tar")}, eval_batch_size=2)
    with pytest.warns(UserWarning, match=bad_key):
        batches = list(dm.val_dataloader()[0])
    keys = [k for b in batches for k in b["key"]]
    assert bad_key not in keys
    skipped = sum(b["skipped"] for b in batches)
    # 3 good samples from the first shard, the complete one of the truncated shard (2 samples),
    # nothing twice; the corrupt sample and the truncation (read error + cut sample) counted.
    assert len(keys) == len(set(keys)) and len(keys) == 4
    assert skipped >= 3


def test_epoch_length_planned_from_the_shard_index(many_shards, tmp_path):
    # 16 samples per source; expected batch size 0.9*2 + 0.1*2 = 2 -> 32 / 2 = 16 batches.
    dm = datamodule(many_shards, batches_per_epoch=None)
    assert len(dm.train_dataloader()) == 16
    lone = tmp_path / "lone-000000.tar"
    lone.write_bytes((many_shards / "indoor" / "train-000000.tar").read_bytes())
    dm = DepthDataModule(train=[TrainSource("x", str(lone))], num_workers=0)
    with pytest.raises(ConfigError, match="batches_per_epoch"):
        dm.train_dataloader()


def test_resumed_run_does_not_replay_the_epoch(many_shards):
    fresh = keys_of(datamodule(many_shards, seed=7).train_dataloader())
    resumed = datamodule(many_shards, seed=7).train_dataloader()
    resumed.dataset.resumed_at = 500  # what train_dataloader sets from trainer.global_step
    assert keys_of(resumed) != fresh


def test_piped_shards_read_like_local_files(many_shards, tmp_path):
    from dm_lightning.data.shard_reader import iter_shard
    from dm_lightning.data.streams import SkipCounter

    path = str(sorted((many_shards / "indoor").glob("val-*.tar"))[0])
    counter = SkipCounter()
    local = list(iter_shard(path, counter.handle))
    piped = list(iter_shard(f"pipe:cat {path}", counter.handle))
    reference = list(iter_shard(path))
    assert counter.total == 0 and len(local) == len(reference) > 0
    for a, b, ref in zip(local, piped, reference):
        assert a["__key__"] == b["__key__"] == ref["__key__"]
        assert a["rgb.png"] == b["rgb.png"] == ref["rgb.png"]
        assert a["depth.png"] == b["depth.png"] and a["json"] == b["json"]
    assert piped[0]["__url__"] == f"pipe:cat {path}"
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar file" * 100)
    unreadable = SkipCounter()
    with pytest.warns(UserWarning, match="cannot open shard .*garbage.tar: ReadError"):
        assert list(iter_shard(str(garbage), unreadable.handle)) == []
    assert unreadable.total == 1 and unreadable.by_shard[str(garbage)] == 1
    # A shard that does not exist (the listed shards existed at start) is an error, not a skip.
    with pytest.raises(DataError, match="shard .*nothing.tar does not exist any more"):
        list(iter_shard(str(many_shards / "nothing.tar"), SkipCounter().handle))


def test_shard_member_names_follow_webdataset(tmp_path):
    from dm_lightning.data.shard_reader import iter_shard
    from dm_lightning.data.streams import SkipCounter

    path = tmp_path / "names.tar"
    members = [
        ("._a.rgb.png", b"apple-double"),  # macOS metadata: no key before the first dot
        ("noext", b"x"),  # no extension: not a sample member
        ("dir/a.rgb.png", b"1"),
        ("dir/a.JSON", b"2"),  # extensions are lower-cased
        ("dir/a.json", b"3"),  # duplicate after lower-casing: counted, first one kept
        ("dir/b.depth.png", b"4"),
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    counter = SkipCounter()
    with pytest.warns(UserWarning, match=r"sample dir/a: duplicate member 'json'"):
        samples = list(iter_shard(str(path), counter.handle))
    assert [s["__key__"] for s in samples] == ["dir/a", "dir/b"]
    assert samples[0]["rgb.png"] == b"1" and samples[0]["json"] == b"2"
    assert samples[1]["depth.png"] == b"4"
    assert counter.total == 1


def test_a_source_with_nothing_decodable_fails_loudly(tmp_path):
    from dm_lightning.data.packing import pack_training_batch
    from dm_lightning.data.streams import SourceStream

    path = tmp_path / "junk-000000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            info = tarfile.TarInfo(f"k{i}.rgb.png")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    stream = SourceStream("junk", [str(path)], 2, pack_training_batch, shuffle_buffer=2)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="nothing readable"):
        next(stream.batches(random.Random(0), stream.urls))


def _raw(meta_changes: dict | None = None, drop: str | None = None, depth=None) -> dict:
    """One encoded 4x5 sample, its JSON edited: ``meta_changes`` set, ``drop`` removed."""
    import numpy as np

    from dm_lightning.data.schema import encode_sample

    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    depth = np.full((4, 5), 2.0) if depth is None else depth
    raw = encode_sample(
        "k0", rgb, depth, source="s", depth_scale=0.01, min_depth=0.1, max_depth=80.0
    )
    meta = json.loads(raw["json"])
    meta.update(meta_changes or {})
    if drop:
        del meta[drop]
    raw["json"] = json.dumps(meta).encode()
    raw["__url__"] = "x/train-000000.tar"
    return raw


@pytest.mark.parametrize(
    "changes, drop, message",
    [
        ({}, "min_depth", r"missing JSON field 'min_depth'"),
        ({"min_depth": 5.0, "max_depth": 2.0}, None, r"min_depth = 5.0 >= max_depth = 2.0"),
        ({"depth_scale": 0}, None, r"'depth_scale' = 0, expected a finite number > 0"),
        ({"depth_scale": float("nan")}, None, r"'depth_scale' = nan"),
        ({"min_depth": -1}, None, r"'min_depth' = -1, expected a finite number >= 0"),
        ({"max_depth": "far"}, None, r"'max_depth' = 'far'"),
        ({"source": ""}, None, r"'source' = '', expected a non-empty string"),
        ({"height": 3}, None, r"PNGs are 4x5 but the JSON says height x width = 3x5"),
        ({"schema_version": 2}, None, r"schema_version 2, but this dm_lightning reads .* 1"),
    ],
)
def test_every_schema_field_is_checked_on_read(changes, drop, message):
    from dm_lightning.data.schema import CorruptSampleError, decode_sample

    with pytest.raises(
        CorruptSampleError, match=r"shard x/train-000000.tar, sample k0: .*" + message
    ):
        decode_sample(_raw(changes, drop))


def test_schema_version_is_written_and_optional_on_read():
    from dm_lightning.data.schema import SCHEMA_VERSION, decode_sample

    raw = _raw()
    assert json.loads(raw["json"])["schema_version"] == SCHEMA_VERSION == 1
    older = _raw(drop="schema_version")  # shards written before the field existed
    assert decode_sample(older)["meta"]["schema_version"] == 1
    assert decode_sample(_raw({"max_depth": None}))["meta"]["max_depth"] is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"min_depth": 0.0, "max_depth": 9.0, "extra": {"schema_version": 2}},
         "would overwrite schema fields"),
        ({"min_depth": 9.0, "max_depth": 1.0}, "min_depth = 9.0 >= max_depth = 1.0"),
    ],
)  # fmt: skip
def test_encode_sample_refuses_bad_fields(fields, message):
    import numpy as np

    from dm_lightning.data.schema import encode_sample

    with pytest.raises(ValueError, match=message):
        encode_sample(
            "k", np.zeros((1, 1, 3), np.uint8), np.ones((1, 1)), source="s", depth_scale=1.0,
            **fields,
        )  # fmt: skip


class Hung(BaseException):
    """Raised by :func:`deadline`; a BaseException, so no data error handler can swallow it."""


@contextlib.contextmanager
def deadline(seconds: float = 20.0):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""

    def fire(signum, frame):
        raise Hung(f"still running after {seconds} s: the stream hangs")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stream(urls, batch_size=2, **kw):
    from dm_lightning.data.packing import pack_training_batch
    from dm_lightning.data.streams import SourceStream

    args = dict(shuffle_buffer=2)
    args.update(kw)
    return SourceStream("src", [str(u) for u in urls], batch_size, pack_training_batch, **args)


def _train_shards(root: Path, tmp_path: Path) -> list[Path]:
    """Copies of the indoor training shards (4 shards of 4 samples)."""
    copies = []
    for shard in sorted((root / "indoor").glob("train-*.tar")):
        copies.append(tmp_path / shard.name)
        copies[-1].write_bytes(shard.read_bytes())
    return copies


def _bad_samples(key_prefix: str, count: int, zero_depth: bool = True) -> list[dict]:
    """Samples that fail on read: min_depth above max_depth, alternating (``zero_depth``) with
    an all-zero depth PNG (which only a training stream skips)."""
    import numpy as np

    raws = []
    for i in range(count):
        if i % 2 or not zero_depth:
            raw = _raw({"min_depth": 5.0, "max_depth": 2.0})
        else:
            raw = _raw(depth=np.zeros((4, 5)))  # every pixel "not measured"
        raw["__key__"] = f"{key_prefix}{i}"
        raws.append(raw)
    return raws


def test_batch_sizes_below_one_are_config_errors(many_shards):
    from dm_lightning.data.streams import ShardSamples

    pattern = str(many_shards / "indoor" / "train-*.tar")
    with pytest.raises(ConfigError, match=r"data.train\[indoor\].batch_size .*>= 1, got 0"):
        TrainSource("indoor", pattern, batch_size=0)
    with pytest.raises(ConfigError, match=r"training source 'src': batch_size .* got -1"):
        _stream([pattern], batch_size=-1)
    with pytest.raises(ConfigError, match=r"data.eval_batch_size must be .*>= 1, got 0"):
        datamodule(many_shards, eval_batch_size=0)
    with pytest.raises(ConfigError, match=r"data.val\[x\]: eval batch size .* got 0"):
        ShardSamples([pattern], 0, dict, list, "data.val[x]")
    with pytest.raises(ConfigError, match=r"data.batches_per_epoch .* got 0"):
        datamodule(many_shards, batches_per_epoch=0)
    with pytest.raises(ConfigError, match=r"data.max_bad_fraction .*\[0, 1\].* got 1.5"):
        datamodule(many_shards, max_bad_fraction=1.5)


@pytest.mark.parametrize(
    "probabilities, message",
    [
        ((float("nan"), 0.1), r"data.train\[indoor\].probability must be a finite number >= 0"),
        ((0.5, -0.1), r"data.train\[outdoor\].probability .* got -0.1"),
        ((0.0, 0.0), r"data.train: the probabilities .* sum to 0.0"),
    ],
)
def test_mixing_probabilities_are_checked_at_construction(many_shards, probabilities, message):
    with pytest.raises(ConfigError, match=message):
        train = [
            TrainSource(name, str(many_shards / name / "train-*.tar"), probability=p)
            for name, p in zip(("indoor", "outdoor"), probabilities)
        ]
        DepthDataModule(train=train)


def test_an_empty_shard_is_a_data_error_not_a_hang(tmp_path):
    empty = write_raw_tar(tmp_path / "train-000000.tar", [])
    stream = _stream([empty])
    with deadline(), pytest.warns(UserWarning, match="holds no sample"):
        with pytest.raises(DataError, match=r"source 'src': nothing readable .*train-000000.tar"):
            next(stream.batches(random.Random(0), stream.urls))
    # The same through the DataModule: its start-up check already refuses the source.
    dm = DepthDataModule(train=[TrainSource("src", str(empty))], batches_per_epoch=2)
    with deadline(), pytest.raises(DataError, match=r"data.train\[src\]: no sample .*empty tar"):
        dm.setup("fit")
    with deadline(), pytest.warns(UserWarning), pytest.raises(DataError, match="nothing readable"):
        next(
            iter(
                DepthDataModule(
                    train=[TrainSource("src", str(empty))], batches_per_epoch=2, num_workers=0
                ).train_dataloader()
            )
        )


def test_a_pass_with_only_bad_samples_is_a_data_error(tmp_path):
    shards = [write_raw_tar(tmp_path / f"bad-{i}.tar", _bad_samples(f"b{i}k", 4)) for i in range(3)]
    # max_bad_fraction=1 leaves the pass rule alone to stop it; every shard was read.
    stream = _stream(shards, max_bad_fraction=1.0, shuffle_buffer=3)
    with deadline(), pytest.warns(UserWarning):
        with pytest.raises(DataError, match="nothing readable") as err:
            next(stream.batches(random.Random(0), stream.urls))
    message = str(err.value)
    assert all(str(s) in message for s in shards)
    assert "no valid depth pixel" in message or "min_depth = 5.0 >= max_depth = 2.0" in message


def test_vanished_shards_are_a_data_error(many_shards, tmp_path):
    shards = _train_shards(many_shards, tmp_path)
    stream = _stream(shards)
    batches = stream.batches(random.Random(0), stream.urls)
    next(batches)
    for shard in shards:
        shard.unlink()
    with deadline(), pytest.raises(DataError, match=r"shard .*train-00000\d.tar does not exist"):
        for _ in range(100):
            next(batches)


def test_one_unreadable_shard_among_good_ones_is_skipped_warned_once_and_counted(
    many_shards, tmp_path
):
    shards = _train_shards(many_shards, tmp_path)
    garbage = tmp_path / "train-000009.tar"
    garbage.write_bytes(b"\x00garbage" * 64)
    stream = _stream([*shards, garbage])
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(itertools.islice(stream.batches(random.Random(0), stream.urls), 60))
    about_garbage = [w for w in caught if "train-000009.tar" in str(w.message)]
    assert len(about_garbage) == 1  # read many times, warned once
    assert "counted silently" in str(about_garbage[0].message)
    assert sum(b["skipped"] for b in batches) >= 2  # every read of it counted
    assert all(len(b["key"]) == 2 for b in batches)


def test_bad_samples_are_skipped_warned_once_per_shard_and_counted(many_shards, tmp_path):
    shards = _train_shards(many_shards, tmp_path)
    mixed = write_raw_tar(tmp_path / "mixed.tar", _bad_samples("bad", 4))
    stream = _stream([*shards, mixed], max_bad_fraction=1.0)
    with deadline(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(itertools.islice(stream.batches(random.Random(1), stream.urls), 60))
    about_mixed = [str(w.message) for w in caught if "mixed.tar" in str(w.message)]
    assert len(about_mixed) == 1 and "further bad samples in this shard" in about_mixed[0]
    keys = {k for b in batches for k in b["key"]}
    assert not any(k.startswith("bad") for k in keys)
    assert sum(b["skipped"] for b in batches) >= 8  # 4 per read of mixed.tar, read >= twice


def test_too_many_bad_samples_stop_the_stream(many_shards, tmp_path):
    shards = _train_shards(many_shards, tmp_path)[:1]
    bad = [write_raw_tar(tmp_path / f"bad-{i}.tar", _bad_samples(f"b{i}k", 4)) for i in range(2)]
    stream = _stream([*shards, *bad], max_bad_fraction=0.2, min_checked=10)
    with deadline(), pytest.warns(UserWarning):
        with pytest.raises(DataError, match=r"source 'src': \d+ of \d+ samples skipped") as err:
            for _ in itertools.islice(stream.batches(random.Random(0), stream.urls), 200):
                pass
    message = str(err.value)
    assert "max_bad_fraction = 0.2" in message and "bad-" in message
    assert "instead of training on garbage" in message


def test_a_mostly_good_source_trains_under_the_default_fraction(many_shards, tmp_path):
    shards = _train_shards(many_shards, tmp_path)
    _corrupt_copy(shards[0], shards[0].with_suffix(".tmp"))
    shards[0].with_suffix(".tmp").replace(shards[0])  # 1 corrupt sample in 16
    stream = _stream(shards, min_checked=10)
    with deadline(), pytest.warns(UserWarning, match="further bad samples"):
        batches = list(itertools.islice(stream.batches(random.Random(0), stream.urls), 100))
    assert sum(b["skipped"] for b in batches) > 0


def test_an_eval_reader_with_only_skips_yields_one_empty_batch(many_shards, tmp_path):
    split = tmp_path / "split"
    split.mkdir()
    write_raw_tar(split / "val-000000.tar", _bad_samples("b", 3, zero_depth=False))
    dm = datamodule(many_shards, val={"x": str(split / "val-*.tar")})
    with deadline(), pytest.warns(UserWarning, match=r"data.val\[x\]: skipped bad data"):
        (batch,) = list(dm.val_dataloader()[0])
    assert batch["skipped"] == 3
    assert batch["rgb"].shape == (0, 3, 1, 1) and batch["rgb"].dtype == torch.uint8
    assert batch["depth"].shape == (0, 1, 1, 1) and batch["depth"].dtype == torch.float32
    assert batch["valid"].shape == (0, 1, 1, 1) and batch["valid"].dtype == torch.bool
    assert batch["min_depth"].shape == batch["max_depth"].shape == (0,)
    assert batch["max_depth"].dtype == torch.float64
    assert batch["source"] == [] and batch["key"] == []
    # An empty tar in an eval split is a counted skip too.
    (split / "val-000000.tar").unlink()
    write_raw_tar(split / "val-000000.tar", [])
    with pytest.warns(UserWarning, match="holds no sample"):
        (batch,) = list(dm.val_dataloader()[0])
    assert batch["skipped"] == 1 and batch["key"] == []


def test_setup_checks_paths_and_schema_version_and_reads_resolutions(many_shards, tmp_path):
    dm = datamodule(many_shards)
    dm.setup("fit")
    assert dm.train_resolutions() == {"indoor": (96, 128), "outdoor": (64, 208)}
    missing = datamodule(many_shards, val={"nyu": str(tmp_path / "nope-*.tar")})
    with pytest.raises(MissingPathError, match=r"data.val\[nyu\]: no shard files match '.*nope"):
        missing.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data.train\[x\].shards: no shard files match"):
        DepthDataModule(train=[TrainSource("x", str(tmp_path / "x/*.tar"))]).setup("fit")
    newer = _raw({"schema_version": 2})
    write_raw_tar(tmp_path / "v2-000000.tar", [newer])
    dm = DepthDataModule(train=[TrainSource("v2", str(tmp_path / "v2-000000.tar"))])
    with pytest.raises(
        DataError,
        match=r"data.train\[v2\]: shard .*v2-000000.tar, sample k0: "
        r"schema_version 2, but this dm_lightning reads schema version 1",
    ):
        dm.setup("fit")
    dm = datamodule(many_shards, test={"v2": str(tmp_path / "v2-000000.tar")})
    dm.setup("fit")  # the test splits are not part of fit
    with pytest.raises(DataError, match=r"data.test\[v2\]: .*schema_version 2"):
        dm.setup("test")


def test_both_datamodules_keep_the_task_contract_and_others_do_not(many_shards):
    """The tasks and callbacks ask a DataModule through one protocol (data/contract.py): ours
    keep it, a plain LightningDataModule or no DataModule get the no-DataModule fallbacks."""
    import lightning as L

    from dm_lightning.data.benchmarks import BenchmarkSpec
    from dm_lightning.data.contract import depth_data
    from dm_lightning.data.datamodule import BenchmarkDataModule

    dm = datamodule(many_shards, test={"indoor": str(many_shards / "indoor" / "test-*.tar")})
    assert depth_data(dm) is dm
    assert list(dm.eval_splits("val")) == dm.val_names == ["indoor", "outdoor"]
    assert list(dm.eval_splits("test")) == dm.test_names == ["indoor"]
    specs = {
        "b": BenchmarkSpec(kind="nyu", root="nowhere"),
        "a": BenchmarkSpec(kind="kitti", root="x"),
    }
    bench = BenchmarkDataModule(specs)  # readers are built at setup, not here
    assert depth_data(bench) is bench
    assert bench.eval_splits("val") == bench.eval_splits("test") == specs
    assert bench.test_names == ["b", "a"]  # config order
    assert depth_data(L.LightningDataModule()) is None
    assert depth_data(None) is None
