"""The one-line reason a failed ZeroMQ bind gives, for every errno (found by mypy: pyzmq has no zmq.ENODEV,
so any bind error other than "in use" / "not available" used to escape as an AttributeError)."""

from __future__ import annotations

import errno

import pytest
import zmq

from p2pswarm.transport.zmq import _reason


@pytest.mark.parametrize("code, reason", [
    (errno.EACCES, "permission denied"),
    (errno.ENODEV, "no such interface or address on this host"),
    (errno.EADDRINUSE, "address already in use; stop the other process or choose another port"),
])
def test_a_bind_error_becomes_one_lower_case_line(code, reason):
    assert _reason(zmq.ZMQError(code)) == reason
