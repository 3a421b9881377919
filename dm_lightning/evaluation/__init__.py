"""The evaluation protocol (docs/method.md §6): its functional core (alignment, metrics),
the torchmetrics classes, the evaluation book of a task, the evaluation tasks (a model, or a
folder of another model's predictions) and the reports with their recorded settings."""
