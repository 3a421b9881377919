"""The first-GPU-run check (``tools/gpu_check.py``): training throughput, memory and TFLOP/s of
both stages at SD-2 size, evaluation and predict speed, and a distributed fit, on one CUDA
device in one command; ``--smoke`` runs the same code on the CPU with the tiny model.

Modules: :mod:`~dm_lightning.gpu_check.search` (largest micro-batch),
:mod:`~dm_lightning.gpu_check.training` (training steps), :mod:`~dm_lightning.gpu_check.inference`
(evaluation, predict), :mod:`~dm_lightning.gpu_check.ddp_fit` (the ``dm-lightning fit``
subprocess), :mod:`~dm_lightning.gpu_check.report` (JSON, Markdown),
:mod:`~dm_lightning.gpu_check.runner` (plan, sections, budget).
"""
