"""Which target a task reads its model in: the one it was given, else the one the loaded
network records (``net.facts``: an export's ``dm_lightning.json``, also for hub ids, whose
folder only the loader downloads), else the task's default."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.utilities import rank_zero_warn

from dm_lightning.targets import check_alignment_space, get_target

if TYPE_CHECKING:
    from dm_lightning.training.base import DepthMasterTask


def settle_target(task: DepthMasterTask, given: str | None, eval_alignment: str | None) -> None:
    """After loading: the network's recorded target (``net.facts``, which also knows hub
    ids' downloaded folders) is the task's when none was given; a given one that differs
    is kept, with a warning (an eval config's target is kept by ``--model <class>``)."""
    recorded = task.net.facts.recorded_target
    if not recorded or recorded == task.hparams.target:
        return
    if given is None:
        task.hparams["target"] = recorded
        task.target = get_target(recorded)
        task.eval_alignment = check_alignment_space(
            eval_alignment or recorded, "model.init_args.eval_alignment"
        )
        return
    rank_zero_warn(
        f"model.init_args.model_path {task.hparams.model_path} was trained on the {recorded} "
        f"target but model.init_args.target is {given}: its output is read (and aligned at "
        f"evaluation) as {given}; pass --model.init_args.target {recorded} to evaluate it "
        "as trained"
    )
