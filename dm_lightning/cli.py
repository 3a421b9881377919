"""The ``dm-lightning`` command: one LightningCLI for fit, validate, test and predict.

Exit status: 0 on success; 2 for a start-up error a user can fix (the message alone is printed,
see :mod:`dm_lightning.errors`); 1 when a guard stopped the run or anything else failed;
128 + signal number (143 for SIGTERM) when a signal stopped ``fit`` after saving a resumable
checkpoint (resume with ``--ckpt_path last``).
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.warnings import PossibleUserWarning

# The baselines' tasks, imported for the same reason as Stage1 and Stage2 below (--model E2EFT).
from dm_lightning.baselines.e2e_ft import E2EFT  # noqa: F401
from dm_lightning.baselines.lotus import LotusD  # noqa: F401
from dm_lightning.baselines.marigold_task import Marigold  # noqa: F401
from dm_lightning.cli_errors import (
    OneLineErrorParser,
    check_trainer_config,
    lightning_error,
    user_error,
    user_message,
)
from dm_lightning.data.contract import depth_data
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.errors import clear_last_error
from dm_lightning.evaluation.prediction_folder import PredictionFolder  # noqa: F401
from dm_lightning.evaluation.tables import terminal_results_table
from dm_lightning.evaluation.task import EvaluationTask

# The model classes are imported so that their short names resolve on the command line
# (--model Stage1, --model.help PredictionFolder): jsonargparse knows the subclasses that have
# been imported.
from dm_lightning.training.base import DepthMasterTask  # noqa: F401
from dm_lightning.training.checkpoints import check_checkpoint_stage
from dm_lightning.training.failed_start import removed_if_start_fails
from dm_lightning.training.run_folder import pin_run_folder
from dm_lightning.training.stage1 import Stage1  # noqa: F401
from dm_lightning.training.stage2 import Stage2  # noqa: F401
from dm_lightning.training.summary import fit_summary

HELP_EPILOG = (
    "The model's own arguments: dm-lightning fit --model.help Stage1 (or Stage2, E2EFT, LotusD, "
    "Marigold, DepthMasterTask, PredictionFolder, or a class path); the data's: --data.help "
    "DepthDataModule; a callback's: "
    "--trainer.callbacks.help ModelCheckpoint. --print_config prints the composed config."
)

# Lightning messages that are noise for dm-lightning's users, matched exactly (other
# warnings stay visible).
_NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6's own use of torch's deprecated pytree LeafSpec, on every evaluation.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Lightning warns about any IterableDataset with a length; ours count their batches per
    # rank and worker exactly (MixedSourceBatches, ShardSamples).
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # The frozen VAE and encoder are in eval mode on purpose; DepthMasterTask warns about any
    # other module found in eval mode at the start of training.
    (r"Found \d+ module\(s\) in eval mode at the start of training", PossibleUserWarning),
)


class _NoTips(logging.Filter):
    """Drops Lightning's adverts for its cloud services ("💡 Tip: ..."), logged on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


class _NoDeviceBanner(logging.Filter):
    """Drops Lightning's device banner ("GPU available: False, used: False", "TPU available:
    False, using: 0 TPU cores"), printed by every command; matched exactly, so its warnings
    (a GPU available but not used) still show."""

    BANNER = re.compile(
        r"GPU available: (True|False)( \(\w+\))?, used: (True|False)"
        r"|TPU available: (True|False), using: \d+ TPU cores"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return self.BANNER.fullmatch(record.getMessage()) is None


def silence_lightning_noise() -> None:
    """Filter the Lightning messages that are noise for our users (see ``_NOISE_WARNINGS``,
    :class:`_NoTips` and :class:`_NoDeviceBanner`); idempotent. Everything else Lightning says
    is still shown."""
    for message, category in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        for kind in (_NoTips, _NoDeviceBanner):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, whose training line also counts optimizer steps when
    ``max_steps`` alone bounds the run (``Epoch 0 · step 37/800``, where Lightning's own reads
    ``Epoch 0/-2``). The CLI's default progress bar when ``rich`` is installed."""

    def _steps_bound(self) -> bool:
        trainer = self.trainer
        return trainer.max_epochs in (None, -1) and (trainer.max_steps or -1) > 0

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._steps_bound():
            return super()._get_train_description(current_epoch)
        trainer = self.trainer
        text = f"Epoch {current_epoch} · step {trainer.global_step}/{trainer.max_steps}"
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Trainer, pl_module: Any) -> dict[str, Any]:
        # Lightning's v_num shows the last 4 characters of the run folder's name ("on_2" for
        # version_2): noise next to the loss.
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None:
            if self._steps_bound():
                description = self._get_train_description(trainer.current_epoch)
                self.progress.update(self.train_progress_bar_id, description=description)


class DepthMasterCLI(LightningCLI):
    """LightningCLI that resumes ``fit`` in the run folder of its checkpoint
    (:mod:`dm_lightning.training.run_folder`), refuses another stage's checkpoint, and prints
    one results table (datasets as rows) after ``test`` and ``validate`` instead of
    Lightning's per-dataloader one."""

    def _parse_ckpt_path(self) -> None:
        # Lightning's own step here replaces the model config by the checkpoint's
        # hyper-parameters, so ours must come first: resolve "last" and pin the run folder,
        # then refuse another stage's checkpoint before any class is built.
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            if subcommand == "fit":
                pin_run_folder(config)
                if config.get("ckpt_path"):
                    # Resuming continues in the run folder: its checkpoints are expected there.
                    warnings.filterwarnings(
                        "ignore", message=r"Checkpoint directory .* exists and is not empty"
                    )
            model = config.get("model")
            checkpoint = check_checkpoint_stage(
                config.get("ckpt_path"), getattr(model, "class_path", None), subcommand == "fit"
            )
            if checkpoint is not None:
                self._config_from_checkpoint(subcommand, checkpoint)
                return
        super()._parse_ckpt_path()

    def _config_from_checkpoint(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        # Lightning's _parse_ckpt_path (2.6) with the checkpoint already read, mapped: its own
        # torch.load reads the whole file (10 GB for an SD-2 last.ckpt) for the hparams only.
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "fit":
            return super()._run_subcommand(subcommand)
        # A fit that fails before its first step leaves no empty version_N folder.
        with removed_if_start_fails(self.trainer):
            super()._run_subcommand(subcommand)

    def before_instantiate_classes(self) -> None:
        # Our checkpoints hold tensors and plain containers only: load them that way, so a
        # --ckpt_path never unpickles code (Lightning's default would be weights_only=False).
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is not None and "weights_only" in config and config.weights_only is None:
            config.weights_only = True
        if config is not None:  # a missing GPU, a save_dir under a file: one line, not a traceback
            check_trainer_config(config.get("trainer"))

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("test", "validate"):
            # Lightning's table truncates our metric names and repeats every value under
            # every dataloader's column; after_test / after_validate print ours instead.
            parser.set_defaults(verbose=False)
        if subcommand == "predict":
            # The writer callback saves each map; Lightning would also keep every one in RAM
            # to return them (its default on one device), growing with the folder.
            parser.set_defaults(return_predictions=False)
        return parser

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # StepProgressBar replaces Lightning's default rich bar, unless the config lists a
        # progress bar of its own or turns it off.
        config = self._get(self.config_init, "trainer", default={})
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if (
            _RICH_AVAILABLE
            and "callbacks" not in kwargs
            and config.get("enable_progress_bar") is not False
            and not any(isinstance(c, ProgressBar) for c in listed)
        ):
            kwargs["callbacks"] = [*listed, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        # trainer.log_dir broadcasts under DDP: resolve it on every rank, print on rank 0.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if self.trainer.is_global_zero:
            print(f"\n{fit_summary(self.trainer, log_dir)}")

    def after_test(self) -> None:
        self.print_results("test")

    def after_validate(self) -> None:
        self.print_results("val")

    def print_results(self, stage: str) -> None:
        """Print (on global rank 0) the results table of the evaluation just run
        (:func:`~dm_lightning.evaluation.tables.terminal_results_table`)."""
        if not self.trainer.is_global_zero:
            return
        data = depth_data(self.datamodule)
        names = (list(data.eval_splits(stage)) if data else []) or ["default"]
        table = terminal_results_table(stage, names, self.trainer.callback_metrics)
        if table is not None:
            print(f"\n{'test' if stage == 'test' else 'validation'} results:\n{table}")


class RunConfigSaver(SaveConfigCallback):
    """Lightning's config saver, writing ``config.yaml`` into the run folder only when there is
    one (a logger): a run without a logger, such as ``predict`` with configs/predict.yaml,
    would otherwise leave a ``config.yaml`` in the working directory. A resumed ``fit``
    writes it over the run's only once it has trained a step: a resume that fails (a
    weights-only checkpoint) leaves the run folder as it was."""

    _start_step: int | None = None

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if trainer.logger is None:
            return
        if stage == "fit" and self.config.get("ckpt_path"):
            self._start_step = -1  # deferred to the first trained step
            return
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self._start_step is not None:
            self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        # On every rank at the same batch: Lightning's setup broadcasts.
        if self._start_step is not None and 0 <= self._start_step < trainer.global_step:
            self._start_step = None
            super().setup(trainer, pl_module, "fit")


STREAMING_CHECKPOINT_IO = "dm_lightning.training.checkpoint_io.StreamingCheckpointIO"


def run_cli(args: list[str] | None = None, run: bool = True) -> DepthMasterCLI:
    """Build (and with ``run``, execute) the CLI; returns it, for tests and notebooks.
    Errors propagate; :func:`main` turns them into messages and exit codes."""
    silence_lightning_noise()
    return DepthMasterCLI(
        # A network (DepthMasterTask and its stages) or another model's prediction files
        # (PredictionFolder): every task validate and test evaluate the same way.
        model_class=EvaluationTask,
        datamodule_class=DepthDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        # Bad arguments and configs end in one line naming the key or file (no usage dump).
        parser_class=OneLineErrorParser,
        parser_kwargs={
            # One name in usage and error hints, also under `python -m dm_lightning`.
            "prog": "dm-lightning",
            **{name: {"epilog": HELP_EPILOG} for name in LightningCLI.subcommands()},
        },
        # Checkpoints stream to disk (Lightning's default buffers a whole file in RAM).
        trainer_defaults={"plugins": [{"class_path": STREAMING_CHECKPOINT_IO}]},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None, close_group: bool = True) -> int:
    """Entry point of ``dm-lightning`` and ``python -m dm_lightning``; returns the exit
    status (see the module docstring)."""
    clear_last_error()
    try:
        run_cli(args)
    except SIGTERMException:
        # Lightning raises this at a batch boundary after SIGTERM (or SIGUSR1, which
        # ResumableCheckpoint forwards); the checkpoint was written by then.
        print(
            "dm-lightning: stopped by a signal; resume with the same command plus --ckpt_path last",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    except Exception as err:
        found = user_error(err) or lightning_error(err)
        if found is None:
            raise
        print(f"dm-lightning: error: {user_message(found)}", file=sys.stderr)
        return found.exit_code
    if close_group:  # not between the steps of an in-process recipe, which reuse the group
        close_process_group()
    return 0


def close_process_group() -> None:
    """Destroy the default process group that a multi-process run (torchrun, SLURM) left
    open. Lightning does not; without it Gloo's worker threads are torn down at interpreter
    exit and rank 0 can abort ("terminate called without an active exception", SIGABRT) after
    a fit that succeeded. Called on success only: after a failure another rank may still be
    in a collective, and destroying the group then can deadlock."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cli_args(
    subcommand: str,
    configs: Sequence[str | PathLike],
    model_path: str | PathLike | None = None,
    save_dir: str | PathLike | None = None,
    *,
    model_class: str | None = None,
    extra: Sequence[str] = (),
    **overrides: object,
) -> list[str]:
    """The argument list of one ``dm-lightning`` run, for :func:`run_cli` / :func:`main` or a
    subprocess: ``subcommand``, ``--config C`` per config in order, then
    ``--model MODEL_CLASS`` (another task class than the configs', e.g. a baseline's, before
    its arguments), ``--model.init_args.model_path`` and
    ``--trainer.logger.init_args.save_dir`` when given,
    then ``--KEY VALUE`` per override (``__`` in KEY spells ``.``:
    ``trainer__max_steps=4`` -> ``--trainer.max_steps 4``), then ``extra`` as written
    (``--trainer.callbacks+=...``, ``--print_config``)."""
    args = [subcommand]
    for config in configs:
        args += ["--config", str(config)]
    if model_class is not None:
        args += ["--model", model_class]
    if model_path is not None:
        args += ["--model.init_args.model_path", str(model_path)]
    if save_dir is not None:
        args += ["--trainer.logger.init_args.save_dir", str(save_dir)]
    for key, value in overrides.items():
        args += ["--" + key.replace("__", "."), str(value)]
    return [*args, *extra]


if __name__ == "__main__":
    sys.exit(main())
