"""Counts in words (dm_lightning.plurals): singular for exactly 1, plural otherwise, in the lines
predict and the tools print."""

from __future__ import annotations

from dm_lightning.inference.outputs import summary_line
from dm_lightning.plurals import count_of


def test_the_noun_is_singular_for_one_only():
    assert count_of(1, "optimizer step") == "1 optimizer step"
    assert count_of(2, "optimizer step") == "2 optimizer steps"
    assert count_of(0, "depth map") == "0 depth maps"
    assert count_of(1, "batch", "batches") == "1 batch"
    assert count_of(3, "batch", "batches") == "3 batches"


def test_predict_summary_line_counts_in_words():
    assert summary_line(1, 1, "out") == "wrote 1 depth map to out, skipped 1 unreadable file"
    assert summary_line(2, 0, "out") == "wrote 2 depth maps to out, skipped 0 unreadable files"
