"""wtal.tasks: what differs between learning problems (data, targets, decoding, metric, selection key).

The trainer asks a task for its data, its models' context and its evaluation; everything else (the loop,
checkpoints, seeding, plug-ins) is shared. ``detection`` is weakly-supervised temporal action localization.
"""

from wtal.tasks.base import TASK_FACTORIES, Task, TaskResult, build_task

__all__ = ["TASK_FACTORIES", "Task", "TaskResult", "build_task"]
