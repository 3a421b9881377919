"""Shards streamed through webdataset ``pipe:`` URLs (how object storage is read: ``pipe:aws s3
cp s3://bucket/train-000000.tar -``): listed as written, read like local files, and a failing
command is a clear error naming the data key and the URL."""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest
import torch

from dm_lightning.data.checks import first_sample_meta
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.shard_paths import expand_shard_patterns
from dm_lightning.data.shard_reader import iter_shard
from dm_lightning.data.shards import indexed_sample_count
from dm_lightning.data.train_source import TrainSource
from dm_lightning.errors import ConfigError, DataError


def _piped(root: Path, split: str = "train") -> str:
    return f"pipe:cat {root}/indoor/{split}-{{000000..000001}}.tar"


def _datamodule(train: str, val: str | None = None, **kw) -> DepthDataModule:
    args = dict(batches_per_epoch=6, num_workers=0, shuffle_buffer=4, seed=5)
    args.update(kw)
    return DepthDataModule(
        train=[TrainSource("indoor", train, batch_size=2)],
        val={"indoor": val} if val else None,
        **args,
    )


def test_pipe_urls_are_brace_expanded_in_order_and_not_checked(tmp_path):
    missing = tmp_path / "nowhere"
    urls = expand_shard_patterns(
        [
            "pipe:aws s3 cp s3://bucket/train-{000001..000002}.tar -",
            f"pipe:cat {missing}/train-000000.tar",
            "https://example.org/shards/train-{000000..000001}.tar",
            "pipe:aws s3 cp s3://bucket/train-000001.tar -",  # a duplicate: kept once
        ],
        "data.train[x].shards",
    )
    assert urls == [
        "pipe:aws s3 cp s3://bucket/train-000001.tar -",
        "pipe:aws s3 cp s3://bucket/train-000002.tar -",
        f"pipe:cat {missing}/train-000000.tar",
        "https://example.org/shards/train-000000.tar",
        "https://example.org/shards/train-000001.tar",
    ]
    assert indexed_sample_count(urls) is None
    # webdataset opens no s3:// URL itself: refused with the pipe: way, naming the key.
    with pytest.raises(
        ConfigError,
        match=r"data.train\[x\].shards: 's3://b/t.tar': .*pipe:aws s3 cp s3://b/t.tar -",
    ):
        expand_shard_patterns("s3://b/t.tar", "data.train[x].shards")


def test_piped_train_and_val_streams_equal_the_local_files(shards):
    local = _datamodule(
        f"{shards}/indoor/train-{{000000..000001}}.tar", f"{shards}/indoor/val-*.tar"
    )
    piped = _datamodule(_piped(shards), f"pipe:cat {shards}/indoor/val-000000.tar")
    for dm in (local, piped):
        dm.setup("fit")  # first-sample checks, through the command for piped
    assert piped.train_resolutions() == local.train_resolutions() == {"indoor": (96, 128)}
    ours, theirs = list(piped.train_dataloader()), list(local.train_dataloader())
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and a["key"] == b["key"]
        for name, value in a.items():
            same = torch.equal(value, b[name]) if torch.is_tensor(value) else value == b[name]
            assert same, name
    (ours,), (theirs,) = piped.val_dataloader(), local.val_dataloader()
    ours, theirs = list(ours), list(theirs)
    assert [b["key"] for b in ours] == [b["key"] for b in theirs] and ours
    # No index.json to count URL shards with: batches_per_epoch must be set.
    with pytest.raises(
        ConfigError,
        match=r"not set.*URL shards \(\[.indoor.\]\) have no index.json to count",
    ):
        _datamodule(_piped(shards), batches_per_epoch=None).train_dataloader()


@pytest.mark.parametrize(
    "command, status",
    [("false", 1), ("cat {root}/indoor/train-999999.tar", 1), ("exit 7", 7)],
    ids=["false", "missing-file", "exit-7"],
)
def test_a_failing_command_is_an_error_naming_the_key_and_url(shards, command, status):
    url = f"pipe:{command.format(root=shards)}"
    dm = _datamodule(url)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert message.startswith("data.train[indoor]: cannot read its first 1 shard(s)")
    assert f"cannot open shard {url}: the command {url[5:]!r} exited with status {status}" in (
        message
    )


def test_a_reader_that_stops_early_does_not_blame_the_command(shards, tmp_path):
    """first_sample_meta reads one sample and closes the pipe; the command (killed by
    SIGPIPE, -13 with exec or bash) is not reported as failed."""
    src = shards / "indoor" / "train-000000.tar"
    big = tmp_path / "big-000000.tar"
    with tarfile.open(src) as tar, tarfile.open(big, "w") as out:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        for copy in range(12):  # about 3 MB: more than the reader's buffer and the pipe's
            for member, data in members:
                info = tarfile.TarInfo(f"c{copy:02d}-{member.name}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    url = f"pipe:exec cat {big}"
    assert first_sample_meta("data.train[big]", [url])["height"] == 96
    with contextlib.closing(iter_shard(url)) as samples:
        assert next(samples)["__key__"] == "c00-indoor-train-000000"
    assert len(list(iter_shard(url))) == 12 * 8
