"""Lightning side: the training stages, their shared base, evaluation bookkeeping, callbacks,
checkpoints and the run folder."""
