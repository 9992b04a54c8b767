"""The agent: runs this node's assigned tasks and reports their state into gossip.

:mod:`.core` decides (pure); :mod:`.driver` applies its decisions to a runtime.
"""

from p2pswarm.agent.core import AgentCore, Assignment, RestartPolicy

__all__ = ["AgentCore", "Assignment", "RestartPolicy"]
