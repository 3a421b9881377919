"""The ``dm-lightning`` command: one LightningCLI for fit, validate, test and predict.

Exit status: 0 on success; 2 for a start-up error a user can fix (the message alone is printed,
see :mod:`dm_lightning.errors`); 1 when a guard stopped the run or anything else failed;
128 + signal number (143 for SIGTERM) when a signal stopped ``fit`` after saving a resumable
checkpoint (resume with ``--ckpt_path last``).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from os import PathLike

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.errors import DMLightningError, clear_last_error, last_error
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.checkpoints import check_checkpoint_stage
from dm_lightning.training.run_folder import pin_run_folder


class DepthMasterCLI(LightningCLI):
    """LightningCLI that resumes ``fit`` in the run folder of its checkpoint
    (:mod:`dm_lightning.training.run_folder`) and refuses another stage's checkpoint."""

    def _parse_ckpt_path(self) -> None:
        # Lightning's own step here replaces the model config by the checkpoint's
        # hyper-parameters, so ours must come first: resolve "last" and pin the run folder,
        # then refuse another stage's checkpoint before any class is built.
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            if subcommand == "fit":
                pin_run_folder(config)
            model = config.get("model")
            check_checkpoint_stage(config.get("ckpt_path"), getattr(model, "class_path", None))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # Our checkpoints hold tensors and plain containers only: load them that way, so a
        # --ckpt_path never unpickles code (Lightning's default would be weights_only=False).
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is not None and "weights_only" in config and config.weights_only is None:
            config.weights_only = True


STREAMING_CHECKPOINT_IO = "dm_lightning.training.checkpoint_io.StreamingCheckpointIO"


def run_cli(args: list[str] | None = None, run: bool = True) -> DepthMasterCLI:
    """Build (and with ``run``, execute) the CLI; returns it, for tests and notebooks.
    Errors propagate; :func:`main` turns them into messages and exit codes."""
    return DepthMasterCLI(
        model_class=DepthMasterTask,
        datamodule_class=DepthDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # Checkpoints stream to disk (Lightning's default buffers a whole file in RAM).
        trainer_defaults={"plugins": [{"class_path": STREAMING_CHECKPOINT_IO}]},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def user_error(error: BaseException) -> DMLightningError | None:
    """The :class:`DMLightningError` behind ``error``: in its chain, or buried as text in a
    jsonargparse instantiation error (then recovered from :func:`last_error`)."""
    texts = []
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DMLightningError):
            return seen
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    last = last_error()
    if last is not None and any(str(last) in text for text in texts):
        return last
    return None


def user_message(error: DMLightningError) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, only the
    original message, without the worker's traceback text torch puts in front of it."""
    text = str(error)
    marker = f"{type(error).__module__}.{type(error).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def main(args: list[str] | None = None) -> int:
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
        found = user_error(err)
        if found is None:
            raise
        print(f"dm-lightning: error: {user_message(found)}", file=sys.stderr)
        return found.exit_code
    return 0


def cli_args(
    subcommand: str,
    configs: Sequence[str | PathLike],
    model_path: str | PathLike | None = None,
    save_dir: str | PathLike | None = None,
    *,
    extra: Sequence[str] = (),
    **overrides: object,
) -> list[str]:
    """The argument list of one ``dm-lightning`` run, for :func:`run_cli` / :func:`main` or a
    subprocess: ``subcommand``, ``--config C`` per config in order, then
    ``--model.init_args.model_path`` and ``--trainer.logger.init_args.save_dir`` when given,
    then ``--KEY VALUE`` per override (``__`` in KEY spells ``.``:
    ``trainer__max_steps=4`` -> ``--trainer.max_steps 4``), then ``extra`` as written
    (``--trainer.callbacks+=...``, ``--print_config``)."""
    args = [subcommand]
    for config in configs:
        args += ["--config", str(config)]
    if model_path is not None:
        args += ["--model.init_args.model_path", str(model_path)]
    if save_dir is not None:
        args += ["--trainer.logger.init_args.save_dir", str(save_dir)]
    for key, value in overrides.items():
        args += ["--" + key.replace("__", "."), str(value)]
    return [*args, *extra]


if __name__ == "__main__":
    sys.exit(main())
