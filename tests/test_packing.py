"""Training batches: memory copies in the workers, finished on the device, same values as the
plain per-sample path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from dm_lightning.data.packing import (
    batch_buffer,
    finish_training_batch,
    has_valid_depth,
    is_packed,
    pack_training_batch,
    valid_unit_range,
)
from dm_lightning.data.schema import (
    decode_sample,
    depth_range,
    encode_sample,
    in_depth_range,
    valid_mask,
)


def raw_sample(key: str, seed: int, max_depth: float, h: int = 12, w: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 90.0, (h, w))
    depth[0, :5] = 0.0  # not measured
    raw = encode_sample(
        key, rgb, depth, source="vkitti", depth_scale=0.01, min_depth=1e-5, max_depth=max_depth
    )
    raw["__url__"] = "memory.tar"
    return raw


def reference_batch(raws: list[dict], flips: list[bool]) -> dict:
    """The straightforward path: float metres, mask, flip and stack, sample by sample."""
    rgbs, depths, valids = [], [], []
    for raw, flip in zip(raws, flips):
        s = decode_sample(raw)
        rgb, depth, valid = s["rgb"], s["depth"], valid_mask(s["depth"], s["meta"])
        if flip:
            rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
        rgbs.append(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        depths.append(depth[None].copy())
        valids.append(valid[None].copy())
    return {"rgb": np.stack(rgbs), "depth": np.stack(depths), "valid": np.stack(valids)}


def test_finished_batch_equals_the_per_sample_path():
    raws = [raw_sample("a", 0, 80.0), raw_sample("b", 1, math.inf), raw_sample("c", 2, 80.0)]
    flips = [True, False, True]
    packed = pack_training_batch([decode_sample(r, depth_as_units=True) for r in raws], flips)
    # the worker's part is copies only: raw rasters, flip decisions and per-sample scalars
    assert packed["rgb"].shape == (3, 12, 20, 3) and packed["depth_units"].dtype == torch.int16
    assert packed["flip"].tolist() == flips
    batch = finish_training_batch(packed)
    assert finish_training_batch(batch) is batch  # finished batches pass through
    assert is_packed(packed) and not is_packed(batch)  # what training_step refuses
    assert not set(batch) & {"depth_units", "depth_scale", "flip"}
    ref = reference_batch(raws, flips)
    assert batch["rgb"].shape == (3, 3, 12, 20) and batch["rgb"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["rgb"].numpy(), ref["rgb"])
    np.testing.assert_array_equal(batch["depth"].numpy(), ref["depth"])
    np.testing.assert_array_equal(batch["valid"].numpy(), ref["valid"])
    # the unbounded source keeps its depths above 80 m; the bounded ones do not
    assert batch["valid"][1].sum() > batch["valid"][0].sum()
    assert not batch["valid"][[0, 2], :, 0, 15:].any()  # flipped zeros land on the right
    assert not batch["valid"][1, :, 0, :5].any()  # unflipped zeros stay on the left
    assert batch["max_depth"].tolist() == [80.0, math.inf, 80.0]
    assert batch["min_depth"].dtype == torch.float64
    assert batch["key"] == ["a", "b", "c"] and batch["source"] == ["vkitti"] * 3


def test_units_above_32767_survive_the_int16_transport():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    depth = np.array([[1.0, 400.0, 655.35], [0.01, 327.68, 0.0]])  # units 100 .. 65535
    raw = encode_sample(
        "k", rgb, depth, source="s", depth_scale=0.01, min_depth=1e-5, max_depth=math.inf
    )
    batch = finish_training_batch(pack_training_batch([decode_sample(raw, True)], [False]))
    np.testing.assert_array_equal(
        batch["depth"][0, 0].numpy(), (np.round(depth / 0.01) * np.float32(0.01)).astype(np.float32)
    )
    assert batch["valid"][0, 0].tolist() == [[True, True, True], [True, True, False]]


def test_units_decoding_keeps_the_png_values():
    raw = raw_sample("a", 3, 80.0)
    units = decode_sample(raw, depth_as_units=True)
    metres = decode_sample(raw)
    assert units["depth_units"].dtype == np.uint16
    np.testing.assert_array_equal(
        units["depth_units"].astype(np.float32) * np.float32(0.01), metres["depth"]
    )
    np.testing.assert_array_equal(units["rgb"], metres["rgb"])


def test_mixed_resolutions_are_refused_naming_the_keys():
    samples = [
        decode_sample(raw_sample("small", 0, 80.0), depth_as_units=True),
        decode_sample(raw_sample("large", 1, 80.0, h=16), depth_as_units=True),
    ]
    with pytest.raises(ValueError, match=r"differ in size.*small.*large"):
        pack_training_batch(samples, [False, False])


class _PackInWorker(IterableDataset):
    def __iter__(self):
        batch = pack_training_batch(
            [
                decode_sample(raw_sample(k, i, 80.0), depth_as_units=True)
                for i, k in enumerate("xy")
            ],
            [False, True],
        )
        batch["shared_in_worker"] = [batch[k].is_shared() for k in ("rgb", "depth_units")]
        yield batch


def test_worker_batches_are_built_in_shared_memory():
    assert not batch_buffer((2, 3), torch.float32).is_shared()  # main process: plain memory
    (batch,) = DataLoader(_PackInWorker(), batch_size=None, num_workers=1)
    assert batch["shared_in_worker"] == [True, True]
    assert finish_training_batch(batch)["rgb"].shape == (2, 3, 12, 20)


@pytest.mark.parametrize(
    "scale, low, high",
    [
        (1e-3, 1e-3, 20.0),
        (2e-3, 1e-5, 80.0),
        (0.01, 1e-5, math.inf),
        (0.1, 0.35, 0.7),
        (1e-3, 70.0, 80.0),
    ],
)
def test_valid_unit_range_is_exactly_the_finished_mask(scale, low, high):
    # Every uint16 unit through the device path: the worker's cheap test must agree with it.
    units = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    sample = {"rgb": np.zeros((256, 256, 3), np.uint8), "depth_units": units, "key": "k"}
    meta = {"source": "s", "depth_scale": scale, "min_depth": low}
    meta["max_depth"] = None if math.isinf(high) else high
    valid = finish_training_batch(pack_training_batch([{**sample, "meta": meta}], [False]))["valid"]
    first, last = valid_unit_range(scale, low, high)
    expected = (units >= first) & (units <= last)
    np.testing.assert_array_equal(valid[0, 0].numpy(), expected)
    for u in (first - 1, first, last, last + 1):  # a sample holding one unit value
        one = np.full((2, 2), np.clip(u, 0, 65535), dtype=np.uint16)
        assert has_valid_depth(one, meta) == bool(expected.flat[np.clip(u, 0, 65535)])
    assert not has_valid_depth(np.zeros((4, 4), np.uint16), meta)  # an all-zero depth PNG


@pytest.mark.parametrize("bounds", [(1e-5, 80.0), (1e-5, None), (0.0, None), (0.5, 10.0)])
def test_one_valid_range_rule_for_numpy_and_torch(bounds):
    """``low < d < high`` fails NaN and +-inf by itself, also with an unbounded (inf) range: bit
    for bit the former ``isfinite(d) & (d > low) & (d < high)``, in numpy and torch alike."""
    meta = {"min_depth": bounds[0], "max_depth": bounds[1]}
    low, high = depth_range(meta)
    assert (low, high) == (bounds[0], math.inf if bounds[1] is None else bounds[1])
    rng = np.random.default_rng(3)
    depth = rng.uniform(-1.0, 100.0, (64, 48)).astype(np.float32)
    for value, count in ((np.nan, 300), (np.inf, 300), (-np.inf, 300), (0.0, 300)):
        depth.flat[rng.integers(0, depth.size, count)] = value
    edges = [low, np.nextafter(np.float32(low), np.float32(1)), 10.0, 80.0]
    depth.flat[: len(edges)] = np.asarray(edges, dtype=np.float32)
    expected = np.isfinite(depth) & (depth > low) & (depth < high)
    assert np.array_equal(valid_mask(depth, meta), expected)
    tensor = torch.from_numpy(depth)
    low32, high32 = (torch.tensor(b, dtype=torch.float64).to(torch.float32) for b in (low, high))
    got = in_depth_range(tensor, low32, high32)
    assert got.dtype == torch.bool and np.array_equal(got.numpy(), expected)
