"""Who may call the server: loopback by default, a bearer token for anything wider.

- :func:`check_bind` is the rule for ``graft serve``: a host other than loopback needs
  ``--token`` (or ``GRAFT_SERVE_TOKEN``), unless ``--insecure`` says, explicitly, that the network
  is trusted.
- :class:`BearerAuth` (ASGI middleware) checks ``Authorization: Bearer <token>`` on every route
  but the page itself and the health probes; the comparison takes the same time whatever the
  guess (``hmac.compare_digest`` of SHA-256 digests, so not even the length leaks).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable

from ..errors import GraftError
from .limits import ASGIApp, Receive, Scope, Send, send_error

PUBLIC = frozenset({"/", "/healthz", "/readyz"})
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse an unprotected server on a non-loopback address (a one-line GraftError)."""
    if token is not None and len(token) < MIN_TOKEN:
        raise GraftError(f"--token is too short ({len(token)} characters); use at least "
                         f"{MIN_TOKEN}, e.g. python -c 'import secrets; print(secrets."
                         "token_urlsafe(32))'")
    if not is_loopback(host) and token is None and not insecure:
        raise GraftError(f"--host {host} is reachable from other machines: pass --token TOKEN (or "
                         "set GRAFT_SERVE_TOKEN) so clients must send it as a bearer token, or "
                         "--insecure if this network is trusted")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BearerAuth:
    """Answer 401 unless the request carries the bearer token (public paths excepted).
    ``on_reject(kind)`` is called for each refusal."""

    def __init__(self, app: ASGIApp, token: str, public: frozenset[str] = PUBLIC,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.public, self.on_reject = app, public, on_reject
        self._want = _digest(f"Bearer {token}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(_digest(given), self._want):
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject("unauthorized")
        await send_error(send, 401, "unauthorized", "missing or wrong bearer token: send "
                         "'Authorization: Bearer <token>'",
                         headers=[(b"www-authenticate", b'Bearer realm="graft"')])
