"""The assignment protocol as a node component: the node routes its wire kinds here and steps it.

Every node runs one: a Raft member answers workers from its applied state; a worker (a node outside
the Raft configuration, or a learner whose replica stopped moving) follows its own assignments; the
agent reads whichever :meth:`AssignmentsHost.agent_state` names (:mod:`p2pswarm.assignments.driver`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from p2pswarm.assignments.config import AssignmentsConfig
from p2pswarm.assignments.driver import AssignmentsDriver
from p2pswarm.assignments.messages import ASSIGNMENT_MESSAGES


class AssignmentsHost:
    name = "assignments"
    MESSAGES = ASSIGNMENT_MESSAGES

    def __init__(self, node_id: str, raft: Any, swim: Any, record: Any, transport: Any,
                 config: AssignmentsConfig = AssignmentsConfig(), clock: Callable[[], float] = time.monotonic) -> None:
        self.driver = AssignmentsDriver(node_id, raft, swim, record, transport, config, clock)

    async def start(self) -> None:
        """Nothing to open: the protocol rides on the node's transport."""

    def step(self, now: float) -> None:
        self.driver.step(now)

    def receive(self, msg: Any) -> None:
        self.driver.receive(msg)

    def agent_state(self) -> tuple[Any, Any] | None:
        return self.driver.agent_state()

    def worker_trust(self) -> Any:
        """The security part a worker follows (:meth:`AssignmentsDriver.worker_trust`); None on a member."""
        return self.driver.worker_trust()

    def worker_access(self) -> Any:
        """The access record a worker checks remote API clients by (:meth:`AssignmentsDriver.worker_access`)."""
        return self.driver.worker_access()

    def is_worker(self) -> bool:
        return self.driver.role() not in ("leader", "voter", "learner")

    async def close(self) -> None:
        """Nothing to release."""

    def metrics(self) -> dict[str, Any]:
        return self.driver.metrics()
