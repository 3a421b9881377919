"""The ``dm-lightning`` command: one LightningCLI for fit, validate, test and predict."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.training.base import DepthMasterTask


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object for callers."""
    return LightningCLI(
        model_class=DepthMasterTask,
        datamodule_class=DepthDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
