"""A task reads its model in the target the model records when none is given (also for hub
ids, whose dm_lightning.json only the loader downloads: it reaches the task as net.facts), and
keeps a given target that differs, with a warning naming both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.fabric.utilities.data import AttributeDict

from dm_lightning.models.model_facts import ModelFacts
from dm_lightning.targets import get_target
from dm_lightning.training.target_choice import settle_target


def _task(recorded: str | None, hparams_target: str) -> SimpleNamespace:
    return SimpleNamespace(
        net=SimpleNamespace(facts=ModelFacts(recorded_target=recorded)),
        hparams=AttributeDict(target=hparams_target, model_path="you/depth-export"),
        target=get_target(hparams_target),
        eval_alignment=hparams_target,
    )


def test_no_target_given_takes_the_networks_recorded_one():
    # a hub id: nothing local to read, so __init__ fell back to the default first
    task = _task("depth", "sqrt_disparity")
    settle_target(task, None, None)
    assert task.hparams["target"] == "depth"
    assert type(task.target).__name__ == "Depth"
    assert task.eval_alignment == "depth"


def test_a_given_eval_alignment_is_kept_when_the_target_is_adopted():
    task = _task("disparity", "sqrt_disparity")
    settle_target(task, None, "sqrt_disparity")
    assert task.hparams["target"] == "disparity" and task.eval_alignment == "sqrt_disparity"


def test_a_given_target_that_differs_is_kept_with_a_warning():
    task = _task("depth", "sqrt_disparity")
    with pytest.warns(
        UserWarning,
        match="was trained on the depth target but model.init_args.target is sqrt_disparity",
    ):
        settle_target(task, "sqrt_disparity", None)
    assert task.hparams["target"] == "sqrt_disparity" and task.eval_alignment == "sqrt_disparity"


def test_nothing_recorded_changes_nothing():
    task = _task(None, "sqrt_disparity")
    settle_target(task, None, None)
    assert task.hparams["target"] == "sqrt_disparity" and task.eval_alignment == "sqrt_disparity"


def test_the_default_space_and_the_exported_pipelines_default_target_agree():
    """models/pipeline_depthmaster.py ships in every export and cannot import dm_lightning, so
    it spells DepthMaster's target itself: the same as the package's default space."""
    from dm_lightning.models.pipeline_depthmaster import DEFAULT_TARGET
    from dm_lightning.targets import DEFAULT_SPACE

    assert DEFAULT_TARGET == DEFAULT_SPACE == "sqrt_disparity"
    assert ModelFacts().target == DEFAULT_SPACE and get_target(DEFAULT_SPACE).name == DEFAULT_SPACE
