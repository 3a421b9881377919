"""The dense evaluation path (``evaluate_batch_dense``, what ``evaluate_batch`` runs on an
accelerator) against the per-image CPU path and the independent numpy reference, run on the
CPU; that it never waits on the host; and the sync-free bookkeeping of ``DepthMetrics`` and
``EvaluationBook``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import reference
from test_metrics import make_batch, t

from dm_lightning.evaluation import book as evaluation_module
from dm_lightning.evaluation import metrics as metrics_module
from dm_lightning.evaluation.book import EvaluationBook
from dm_lightning.evaluation.metrics import DepthMetrics
from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch, evaluate_batch_dense
from dm_lightning.targets import ALIGNMENT_SPACES

RTOL, ATOL = 1e-9, 1e-12


def both_paths(pred, gt, valid, lo, hi, space):
    """(CPU per-image output, dense output) of the same batch; numpy inputs become tensors."""
    args = [t(x) if isinstance(x, np.ndarray) else x for x in (pred, gt, valid, lo, hi)]
    return evaluate_batch(*args, space), evaluate_batch_dense(*args, space)


def assert_same(cpu, dense):
    """Dense equals CPU within RTOL / ATOL, inf and NaN in the same places."""
    (cpu_values, cpu_valid), (dense_values, dense_valid) = cpu, dense
    assert dense_valid.dtype == torch.bool
    assert dense_valid.tolist() == cpu_valid.tolist()
    assert set(dense_values) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        got, expected = dense_values[name], cpu_values[name]
        assert got.dtype == torch.float64 and got.shape == expected.shape, name
        np.testing.assert_allclose(
            got.numpy(), expected.numpy(), rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name
        )


def assert_matches_reference(dense, pred, gt, valid, lo, hi, space, images=None):
    """Dense equals dm_lightning.testing.reference within RTOL / ATOL (inf / NaN alike) on
    ``images``
    (default all); images the reference gives None for have all-zero metrics, no valid flag."""
    values, has_valid = dense
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = reference.evaluate(pred, gt, valid, lo, hi, space)
    for i in range(len(ref)) if images is None else images:
        if ref[i] is None:
            assert not has_valid[i]
            assert all(values[name][i].item() == 0.0 for name in METRIC_NAMES)
            continue
        assert has_valid[i]
        for name in METRIC_NAMES:
            np.testing.assert_allclose(
                values[name][i].item(), ref[i][name], rtol=RTOL, atol=ATOL, equal_nan=True,
                err_msg=f"image {i}, {name}",
            )  # fmt: skip


def check(pred, gt, valid, lo, hi, space, reference_images=None):
    cpu, dense = both_paths(pred, gt, valid, lo, hi, space)
    assert_same(cpu, dense)
    assert_matches_reference(dense, pred, gt, valid, _np(lo), _np(hi), space, reference_images)
    return dense


def _np(bound):
    return bound.double().numpy().reshape(-1) if isinstance(bound, torch.Tensor) else bound


# ---------------------------------------------------------------------------------------------
# dense == CPU == numpy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_batches_with_an_empty_image(space, seed):
    rng = np.random.default_rng(100 + seed)
    pred, gt, valid = make_batch(rng, [0.9, 0.0, 0.5, 0.05], shape=(24, 20))
    values, has_valid = check(pred, gt, valid, 1e-3, 80.0, space)
    assert has_valid.tolist() == [True, False, True, True]
    assert all(values[name][1].item() == 0.0 for name in METRIC_NAMES)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_four_d_input_and_float64_prediction(space):
    rng = np.random.default_rng(110)
    pred, gt, valid = make_batch(rng, [0.8, 0.6])
    pred = pred.astype(np.float64)
    cpu, dense = both_paths(pred[:, None], gt[:, None], valid[:, None], 1e-3, 10.0, space)
    assert_same(cpu, dense)
    assert_matches_reference(dense, pred, gt, valid, 1e-3, 10.0, space)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_constant_prediction_is_the_degenerate_fit(space):
    rng = np.random.default_rng(120)
    pred, gt, valid = make_batch(rng, [0.8, 0.8, 0.8])
    pred[0] = 0.5  # exact in binary: det is exactly 0
    pred[1] = 0.1  # not exact: det is rounding noise, still degenerate
    valid[2] = False  # one valid pixel: det = 0
    valid[2, 3, 4] = True
    pred[2, 3, 4], gt[2, 3, 4] = 0.6, 2.0
    values, _ = check(pred, gt, valid, 1e-3, 80.0, space)
    assert values["abs_rel"][2].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_valid_pixels_with_gt_zero_or_inf_give_the_same_inf_and_nan(space):
    rng = np.random.default_rng(130)
    pred, gt, valid = make_batch(rng, [0.7, 0.7, 0.7, 0.7])
    valid[0, 0, :2] = True
    gt[0, 0, :2] = 0.0  # GT 0 on valid pixels
    valid[1, 1, :3] = True
    gt[1, 1, :3] = np.inf  # GT inf on valid pixels
    valid[2, 2, :2] = True
    gt[2, 2, 0], gt[2, 2, 1] = 0.0, np.inf  # both in one image
    values, has_valid = check(pred, gt, valid, 1e-3, 80.0, space)
    assert has_valid.all()
    for i in (0, 1, 2):
        assert not np.isfinite(values["abs_rel"][i].item())
    assert np.isnan(values["abs_rel"][1].item())  # (d - inf) / inf
    assert values["abs_rel"][0].item() == np.inf  # d / 0
    assert all(np.isfinite(values[name][3].item()) for name in METRIC_NAMES)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_non_positive_predictions(space):
    rng = np.random.default_rng(140)
    pred, gt, valid = make_batch(rng, [0.8, 0.8, 0.8])
    pred[0, :4] = 0.0  # the clip floor of a [0, 1] output
    pred[1, :, :5] = -0.2  # negative
    # image 2: every prediction <= 0, so the disparity-space fits have no pixel: (1, 0)
    pred[2] = -np.abs(pred[2])
    pred[2, :2] = 0.0
    # numpy's lstsq on no row gives (0, 0), not (1, 0): image 2 is checked against CPU only
    images = None if space == "depth" else [0, 1]
    values, has_valid = check(pred, gt, valid, 1e-3, 80.0, space, reference_images=images)
    assert has_valid.tolist() == [True, True, True]
    if space != "depth":
        # image 2 by hand: scale 1, shift 0, the space's inverse, then the [1e-3, 80] clip
        p, g = pred[2][valid[2]].astype(np.float64), gt[2][valid[2]].astype(np.float64)
        disparity = p**2 if space == "sqrt_disparity" else p
        depth = np.clip(1.0 / np.maximum(disparity, 1e-3), 1e-3, 80.0)
        expected = np.mean(np.abs(depth - g) / g)
        assert values["abs_rel"][2].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_nan_predictions_on_valid_pixels(space):
    rng = np.random.default_rng(145)
    pred, gt, valid = make_batch(rng, [0.8, 0.8])
    valid[0, 0, 0] = True
    pred[0, 0, 0] = np.nan  # fitted in the depth space (poisons the fit), not in the others
    pred[1] = np.where(valid[1], pred[1], np.nan)  # NaN only outside the mask: no effect
    cpu, dense = both_paths(pred, gt, valid, 1e-3, 80.0, space)
    assert_same(cpu, dense)
    assert all(np.isfinite(dense[0][name][1].item()) for name in METRIC_NAMES)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_per_image_range_tensors_with_inf_max(space):
    rng = np.random.default_rng(150)
    pred, gt, valid = make_batch(rng, [0.9, 0.7, 0.5, 0.6, 0.6])
    # a range up to inf, two tight ones, one below the 1e-6 floor and one with lo > hi
    lo = torch.tensor([1e-5, 2.0, 1e-3, 0.0, 5.0], dtype=torch.float64)
    hi = torch.tensor([np.inf, 5.0, 10.0, 1e-7, 3.0], dtype=torch.float64)
    values, _ = check(pred, gt, valid, lo, hi, space)
    # by hand, whatever the fit: image 3's range lies below the 1e-6 floor, so every depth is
    # 1e-6; image 4's lo > hi clamps every depth to hi = 3 m (torch.clamp's rule)
    for i, depth in ((3, 1e-6), (4, 3.0)):
        g = gt[i][valid[i]].astype(np.float64)
        assert values["abs_rel"][i].item() == pytest.approx(np.mean(np.abs(depth - g) / g))
        ratio = depth / g
        inside = np.mean((ratio > 1 / 1.25) & (ratio < 1.25))
        assert values["delta1"][i].item() == pytest.approx(inside)
    assert values["delta1"][3].item() == 0.0  # 1e-6 m is far from every GT in [0.5, 20] m
    # float32 (B, 1) columns, as a collated batch may hold them: the same numbers
    values32, _ = check(pred, gt, valid, lo.float()[:, None], hi.float()[:, None], space)
    for i in (0, 3, 4):  # bounds exact in float32
        assert values32["abs_rel"][i].item() == pytest.approx(values["abs_rel"][i].item())


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_python_float_and_one_value_tensor_ranges(space):
    rng = np.random.default_rng(160)
    pred, gt, valid = make_batch(rng, [0.9, 0.6])
    a = check(pred, gt, valid, 1.0, float("inf"), space)
    b = check(pred, gt, valid, torch.tensor(1.0), torch.tensor([np.inf]), space)
    c = check(pred, gt, valid, np.float64(1.0), np.float32(np.inf), space)
    for other in (b, c):
        for name in METRIC_NAMES:
            assert torch.equal(a[0][name], other[0][name]), name


def test_wrong_number_of_range_values_is_refused():
    pred = torch.rand(2, 4, 4)
    gt, valid = pred + 1.0, torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"hold 1 or 2 \(batch size\) values, got shape \(3,\)"):
        evaluate_batch_dense(pred, gt, valid, torch.ones(3), 10.0)


def test_empty_batch():
    values, has_valid = evaluate_batch_dense(
        torch.rand(0, 4, 4), torch.rand(0, 4, 4), torch.ones(0, 4, 4, dtype=torch.bool), 1e-3, 1.0
    )
    assert has_valid.shape == (0,)
    assert all(values[name].shape == (0,) for name in METRIC_NAMES)


def test_predictions_that_need_gradients_and_inputs_left_untouched():
    rng = np.random.default_rng(170)
    pred, gt, valid = make_batch(rng, [0.9, 0.7])
    p, g, v = t(pred.astype(np.float64)).requires_grad_(), t(gt.astype(np.float64)), t(valid)
    before = [x.detach().clone() for x in (p, g, v)]
    dense = evaluate_batch_dense(p, g, v, 1e-3, 80.0)
    assert not any(value.requires_grad for value in dense[0].values())
    for x, y in zip((p, g, v), before):  # float64 inputs: .double() is the caller's tensor
        torch.testing.assert_close(x.detach(), y, rtol=0, atol=0, equal_nan=True)
    assert_same(evaluate_batch(p, g, v, 1e-3, 80.0), dense)


# ---------------------------------------------------------------------------------------------
# no device->host sync
# ---------------------------------------------------------------------------------------------


def _forbid(name):
    def raiser(*args, **kwargs):
        raise AssertionError(f"device->host sync: Tensor.{name} called")

    return raiser


@pytest.fixture
def no_host_sync(monkeypatch):
    """Every Python-level way to read a tensor's data on the host raises, as does boolean (or
    other tensor) indexing, whose output size the host must learn from the device."""
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                 "numpy", "cpu"):  # fmt: skip
        monkeypatch.setattr(torch.Tensor, name, _forbid(name))
    monkeypatch.setattr(torch, "nonzero", _forbid("torch.nonzero"))
    monkeypatch.setattr(torch, "argwhere", _forbid("torch.argwhere"))
    monkeypatch.setattr(torch, "masked_select", _forbid("torch.masked_select"))
    getitem = torch.Tensor.__getitem__

    def checked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(part, torch.Tensor) for part in parts):
            raise AssertionError("device->host sync: indexing with a tensor")
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", checked_getitem)


def test_the_guard_catches_the_cpu_path(no_host_sync):
    pred = torch.rand(2, 4, 4)
    with pytest.raises(AssertionError, match="device->host sync"):
        evaluate_batch(pred, pred + 1.0, torch.ones(2, 4, 4, dtype=torch.bool), 1e-3, 10.0)


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_dense_path_makes_no_host_sync(space, no_host_sync, monkeypatch):
    rng = np.random.default_rng(180)
    pred, gt, valid = make_batch(rng, [0.9, 0.0, 0.4])
    args = (t(pred)[:, None], t(gt)[:, None], t(valid)[:, None])
    bounds = [
        (1e-3, float("inf")),
        (torch.tensor([1e-3, 0.1, 1.0]), torch.tensor(80.0)),
        (torch.zeros(3, 1), torch.ones(3, 1)),
    ]
    # under the guard: any host read raises
    dense = [evaluate_batch_dense(*args, lo, hi, space) for lo, hi in bounds]
    monkeypatch.undo()  # guard off: the values the sync-free path gave are the right ones
    for (lo, hi), out in zip(bounds, dense):
        assert out[1].tolist() == [True, False, True]
        assert_same(evaluate_batch(*args, lo, hi, space), out)


def test_dense_path_and_depth_metrics_run_on_the_meta_device():
    """The meta device has no data at all: anything that reads a value (a sync on a GPU)
    fails there. Also checks the dispatch: evaluate_batch on a non-CPU device is dense."""
    pred = torch.empty(3, 1, 48, 64, device="meta")
    valid = torch.empty(3, 1, 48, 64, dtype=torch.bool, device="meta")
    bounds = torch.empty(3, device="meta")
    for space in ALIGNMENT_SPACES:
        values, has_valid = evaluate_batch(pred, pred, valid, bounds, float("inf"), space)
        assert has_valid.device.type == "meta" and has_valid.shape == (3,)
        assert has_valid.dtype == torch.bool
        assert all(values[n].shape == (3,) and values[n].dtype == torch.float64 for n in values)
    total = metrics_module._sum_where(values["abs_rel"], has_valid)
    assert total.device.type == "meta" and total.shape == ()


# ---------------------------------------------------------------------------------------------
# DepthMetrics and EvaluationBook: the same numbers as before
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ALIGNMENT_SPACES)
def test_depth_metrics_fed_by_the_dense_path_equals_the_cpu_path(space):
    rng = np.random.default_rng(190)
    cpu, dense = DepthMetrics(space=space), DepthMetrics(space=space)
    for fractions in ([0.9, 0.0, 0.3], [0.5], [0.0, 0.7]):
        pred, gt, valid = make_batch(rng, fractions)
        cpu.update(t(pred), t(gt), t(valid), 1e-3, 80.0)
        dense.update_values(*evaluate_batch_dense(t(pred), t(gt), t(valid), 1e-3, 80.0, space))
    expected, got = cpu.compute(), dense.compute()
    assert int(got["num_images"]) == 4 and int(got["skipped_images"]) == 2
    for name in METRIC_NAMES:
        np.testing.assert_allclose(got[name].item(), expected[name].item(), rtol=RTOL)


def test_sum_where_leaves_nan_of_left_out_images_out():
    values = torch.tensor([1.0, np.nan, 2.0], dtype=torch.float64)
    keep = torch.tensor([True, False, True])
    assert metrics_module._sum_where(values, keep).item() == 3.0


def _book_batches(seed):
    rng = np.random.default_rng(seed)
    batches = []
    for n, fractions in enumerate(([0.9, 0.0, 0.4], [0.6], [0.3, 0.8])):
        pred, gt, valid = make_batch(rng, fractions)
        keys = [f"img{9 - 3 * n - i}" for i in range(len(fractions))]  # not in key order
        batch = {
            "key": keys,
            "depth": t(gt)[:, None],
            "valid": t(valid)[:, None],
            "min_depth": torch.full((len(keys),), 1e-3),
            "max_depth": torch.full((len(keys),), 80.0),
            "skipped": n,
        }
        batches.append((batch, t(pred)[:, None]))
    return batches


def _run_book(batches):
    book = EvaluationBook("sqrt_disparity")
    book.build({"test": ["split"]}, torch.device("cpu"))
    for batch, pred in batches:
        book.update("test", "split", batch, pred)
    book.update("test", "split", {"key": [], "skipped": 4}, None)  # a skip-only report
    logged = {}
    book.compute_and_log("test", ["split"], lambda name, value, **_: logged.update({name: value}))
    return book.per_image_results["split"], logged


def test_evaluation_book_rows_match_evaluate_batch_and_are_made_at_epoch_end(monkeypatch):
    batches = _book_batches(200)
    expected = []
    for batch, pred in batches:
        values, has_valid = evaluate_batch(
            pred, batch["depth"], batch["valid"], batch["min_depth"], batch["max_depth"]
        )
        for i, key in enumerate(batch["key"]):
            if has_valid[i]:
                expected.append({"key": key, **{m: float(values[m][i]) for m in METRIC_NAMES}})
    expected.sort(key=lambda row: row["key"])

    # While batches come in, nothing is read back from the device (the CPU path of
    # evaluate_batch itself aside, swapped for the dense one here); only compute_and_log does.
    monkeypatch.setattr(evaluation_module, "evaluate_batch", evaluate_batch_dense)
    tolist_calls = []
    tolist = torch.Tensor.tolist

    def counting_tolist(self):
        tolist_calls.append(tuple(self.shape))
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    rows, logged = _run_book(batches)
    assert tolist_calls == [(6, len(METRIC_NAMES) + 1)]  # one copy of all the split's rows
    assert [row["key"] for row in rows] == [row["key"] for row in expected]
    assert len(rows) == 5  # img9's batch-mate img8 had no valid pixel
    for row, want in zip(rows, expected):
        assert list(row) == list(want)
        for m in METRIC_NAMES:
            assert row[m] == pytest.approx(want[m], rel=RTOL), (row["key"], m)
    assert float(logged["test/split/skipped_samples"]) == 0 + 1 + 2 + 4
    assert float(logged["test/split/num_images"]) == 5
    assert float(logged["test/split/skipped_images"]) == 1

    # and on the CPU path the rows are exactly the earlier per-image float() values
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(evaluation_module, "evaluate_batch", evaluate_batch)
    rows, _ = _run_book(batches)
    assert rows == expected


def test_evaluation_book_refuses_a_key_list_of_the_wrong_length():
    (batch, pred), *_ = _book_batches(210)
    book = EvaluationBook("sqrt_disparity")
    book.build({"test": ["split"]}, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'split': the batch has 2 keys for 3 predictions"):
        book.update("test", "split", {**batch, "key": batch["key"][:2]}, pred)


@pytest.mark.parametrize("lo", [0.0, 1e-7, 1e-3])
@pytest.mark.parametrize("hi", [np.inf, 50.0, 1e-7])
def test_negative_aligned_depth_is_floored_after_the_range_clip(lo, hi):
    # depth-space fit of 10 points at 1 and one at 100: s = 45, t = -12.5, negative near p = 0
    p = np.linspace(0.0, 1.0, 11)[None, None, :]
    gt = np.ones_like(p)
    gt[0, 0, -1] = 100.0
    valid = np.ones(p.shape, dtype=bool)
    values, _ = check(p, gt, valid, lo, hi, "depth")
    assert all(np.isfinite(values[name][0].item()) for name in METRIC_NAMES)
