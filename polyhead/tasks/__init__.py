"""Tasks: what a request asks the shared backbone to do (generate, classify, tag, embed)."""

from polyhead.tasks.spec import TASK_KINDS, TaskSpec

__all__ = ["TASK_KINDS", "TaskSpec"]
