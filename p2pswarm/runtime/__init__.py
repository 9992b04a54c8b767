"""Task runtimes: the :class:`~.base.Runtime` protocol, the process runtime, health checks."""

from p2pswarm.runtime.base import HealthCheck, Runtime, TaskExit, TaskHandle, TaskSpec

__all__ = ["HealthCheck", "Runtime", "TaskExit", "TaskHandle", "TaskSpec"]
