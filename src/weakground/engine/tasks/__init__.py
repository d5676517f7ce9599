"""Training tasks: what the one training driver (:mod:`weakground.engine.driver`) runs.

Each task (a :class:`~weakground.engine.tasks.base.Task`) supplies what differs between kinds of supervision; the
dataset registry says which task consumes a dataset, so the driver never branches on a dataset's name.
Importing this package registers ``label_grounding``, ``caption_grounding`` and ``captioning``.
"""

from __future__ import annotations

from weakground.config import ExperimentConfig
from weakground.engine.tasks import caption_grounding, captioning, label_grounding
from weakground.engine.tasks.base import TASKS, Task

__all__ = ["TASKS", "Task", "caption_grounding", "captioning", "label_grounding", "task_for"]


def task_for(config: ExperimentConfig) -> Task:
    """The task a method declares (a captioner: ``captioning``), else the one that consumes ``config.data``
    (unknown names: one line listing the registered ones)."""
    from weakground.data.sources import dataset_source
    from weakground.registry import METHODS

    import weakground.methods  # noqa: F401  (registers every method)

    declared = METHODS.get(config.method.name).task
    return TASKS.get(declared or dataset_source(config.data.name).task)()
