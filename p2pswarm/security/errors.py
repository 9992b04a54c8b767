"""The errors of the security layer; each message is one line saying what is wrong and what to do."""

from __future__ import annotations


class SecurityError(Exception):
    """Base: a one-line, human-readable reason. ``code`` names the case for programs and counters."""

    code = "security"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CertificateError(SecurityError):
    """A certificate is malformed, from another CA or cluster, expired, not yet valid, revoked or mismatched.

    ``code`` is one of :data:`CERT_CODES`.
    """

    code = "malformed"


CERT_CODES = ("malformed", "wrong_ca", "wrong_cluster", "expired", "not_yet_valid", "revoked",
              "key_mismatch", "node_mismatch", "not_a_node_cert", "ca_expired")


class TokenError(SecurityError):
    """A join token is malformed, of an unknown version, expired, rotated, wrong or for another cluster."""

    code = "malformed"


class KeyFileError(SecurityError):
    """A key file or a sealed secret cannot be read: corrupt, truncated or the wrong cluster key."""

    code = "corrupt"


class JoinError(SecurityError):
    """The join handshake failed (either side); ``code`` is one of :data:`p2pswarm.security.join.JOIN_CODES`."""

    code = "join"
