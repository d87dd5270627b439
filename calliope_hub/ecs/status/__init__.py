"""Task status for one ECS cluster: the TaskWatcher facade over a store and a sweeper."""

from calliope_hub.ecs.status.watcher import TaskNotWatched, TaskWatcher

__all__ = ["TaskNotWatched", "TaskWatcher"]
