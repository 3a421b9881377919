"""Sharing exported models on the Hugging Face hub: model cards and uploads.

- :mod:`dm_lightning.hub.training_facts`: what an export records about its training.
- :mod:`dm_lightning.hub.eval_results`: evaluation results read from the files ``test`` writes.
- :mod:`dm_lightning.hub.model_card`: the export's ``README.md`` (``ModelCard``).
- :mod:`dm_lightning.hub.push`: repository names and the upload.
"""
