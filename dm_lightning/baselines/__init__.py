"""The single-step family as baselines, trained and tested as DepthMaster is (docs/method.md §8).

Each method is a network (a :class:`~dm_lightning.baselines.network.BaselineNetwork`: SD-2's
VAE and U-Net with the method's own latent inference) and a task (a
:class:`~dm_lightning.baselines.task.BaselineTask`, a sibling of the DepthMaster stages with the
method's own training loss), so ``dm-lightning fit`` / ``test`` / ``predict``, the DataModule,
the schedule, checkpoints and exports are the ones DepthMaster uses.
"""
