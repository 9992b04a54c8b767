"""The CLI's way to a remote node: HTTPS with a client bundle (:mod:`p2pswarm.security.clientcerts`).

The server is accepted when its certificate chains to the bundle's ``ca.pem`` (the API CA,
:mod:`p2pswarm.security.apica`) and is an API server certificate of the bundle's cluster
(``O = p2pswarm api <cluster id>``): nodes are named by their certificates, so the host name is not
checked.  Every failure is one line naming what to do.
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from p2pswarm.security.apica import server_identity
from p2pswarm.security.clientcerts import BundleError, read_bundle_info

DEFAULT_PORT = 2377
"""Port of ``https://HOST`` without one (Docker Swarm's management port, as a familiar default)."""


class RemoteError(Exception):
    """The remote target cannot be used (one line)."""


@dataclass(frozen=True)
class Remote:
    """A remote API: ``https://HOST:PORT`` and the client bundle to show it."""

    host: str
    port: int
    bundle: Path
    cluster_id: str
    name: str = ""
    role: str = ""
    not_after: float = 0.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_host(url: str) -> tuple[str, int]:
    """(host, port) from ``https://HOST[:PORT]`` (or ``tcp://``, as DOCKER_HOST has it); RemoteError otherwise."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = 0
    if parts.scheme not in ("https", "tcp") or not parts.hostname or not 0 < port < 65536 \
            or parts.path not in ("", "/"):
        raise RemoteError(f"--host must look like https://HOST:PORT, got {url!r}")
    return parts.hostname, port


def remote(url: str, bundle: str | Path) -> Remote:
    """A target from a host URL and a bundle directory (checked now: one line when unusable)."""
    host, port = parse_host(url)
    path = Path(bundle).expanduser().absolute()
    try:
        info = read_bundle_info(path)
    except BundleError as exc:
        raise RemoteError(str(exc)) from None
    not_after = info.get("not_after")
    return Remote(host, port, path, info["cluster_id"], str(info.get("name", "")), str(info.get("role", "")),
                  not_after if isinstance(not_after, (int, float)) else 0.0)


class RemoteConnection(http.client.HTTPSConnection):
    """HTTPS to a node, refusing one that is not a member of the bundle's cluster."""

    def __init__(self, target: Remote, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context(target))
        self.target = target

    def connect(self) -> None:
        super().connect()
        ident = server_identity(self.sock.getpeercert(binary_form=True))
        if ident is None or ident[0] != self.target.cluster_id:
            self.close()
            raise RemoteError(f"{self.target.url} is not a node of cluster {self.target.cluster_id} (its certificate "
                              f"names {ident[0] if ident else 'no p2pswarm cluster'}); check --host")


def context(target: Remote) -> ssl.SSLContext:
    if target.not_after and time.time() > target.not_after:
        raise RemoteError(f"the client certificate in {target.bundle} ({target.name}) expired at "
                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(target.not_after))}; ask an admin for "
                          f"a new bundle (`p2pswarm cluster client-cert`)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the node is named by its certificate's cluster (checked in connect)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(str(target.bundle / "ca.pem"))
        ctx.load_cert_chain(str(target.bundle / "cert.pem"), str(target.bundle / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise RemoteError(f"the client bundle {target.bundle} cannot be loaded ({exc}); make a new one") from None
    return ctx


def explain(target: Remote, exc: BaseException) -> str:
    """One line for a failed remote call."""
    if isinstance(exc, RemoteError):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens at {target.url}; is the node up with `--api-addr`?"
    if isinstance(exc, TimeoutError):
        return f"the node at {target.url} did not answer in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the node at {target.url} has a certificate that the bundle's CA did not sign: it belongs to "
                f"another cluster or its API CA was rotated (`p2pswarm cluster api-ca`): check --host or get a "
                f"new bundle")
    if isinstance(exc, ssl.SSLError):
        return (f"the node at {target.url} refused this client certificate ({exc.reason or exc}): it is expired, "
                f"from another cluster or not from this cluster's CA; ask an admin for a new bundle")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return (f"the node at {target.url} closed the connection during the TLS handshake: it refused this client "
                f"certificate (expired, revoked or from another cluster) or is not a p2pswarm API")
    return f"cannot talk to the node at {target.url}: {exc or type(exc).__name__}"

