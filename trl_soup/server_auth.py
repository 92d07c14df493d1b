"""Token authentication of the behavior and teacher vLLM servers (standard library only).

A server started by ``trl-soup serve-behavior`` runs vLLM's dev-mode endpoints (``/collective_rpc``, weight reloads,
LoRA loading): whoever reaches its port can change its weights. vLLM's own ``--api-key`` guards only paths under
``/v1``, ``/v2``, ``/inference`` and ``/cohere``. So the server gets :class:`TokenAuthMiddleware` (vLLM's
``--middleware trl_soup.server_auth.TokenAuthMiddleware``): every route but ``/health`` needs
``Authorization: Bearer <token>``. The token is a shared secret:

- server side: ``TRL_SOUP_SERVER_TOKEN`` in its environment, or ``--token-file PATH`` (passed to the server process as
  ``TRL_SOUP_SERVER_TOKEN_FILE``, so the token itself is in neither its command line nor its environment);
- trainer side: ``SOUPConfig.behavior_server_token``, or ``TRL_SOUP_SERVER_TOKEN`` when that is None.

:func:`check_server_address` is the one rule both sides apply: a server off this machine's loopback needs a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from urllib.parse import urlparse

TOKEN_ENV = "TRL_SOUP_SERVER_TOKEN"
TOKEN_FILE_ENV = "TRL_SOUP_SERVER_TOKEN_FILE"
MIDDLEWARE = "trl_soup.server_auth.TokenAuthMiddleware"
OPEN_PATHS = ("/health",)  # liveness probes


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_server_address(url: str, has_token: bool, option: str) -> str | None:
    """The rule for a server's address: refuse one off the loopback without a token; warn when a token would cross
    the network in clear text.

    Args:
        url: the server's base URL (``http://`` or ``https://``).
        has_token: whether a token is set.
        option: what set the address, named in the message (e.g. ``"behavior_server_base_url"``, ``"--host"``).

    Returns:
        A warning for a token sent over plain ``http`` to another machine, else None.

    Raises:
        ValueError: ``url`` has no scheme or host, or is not on the loopback and ``has_token`` is False.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"{option}={url!r} is not a server address: write it as http://HOST:PORT or https://HOST:PORT "
            "(e.g. http://127.0.0.1:8001)."
        )
    if is_loopback(parsed.hostname):
        return None
    if not has_token:
        raise ValueError(
            f"{option}: the server at {url} is not on this machine's loopback and no token is set. It runs vLLM's "
            "dev-mode endpoints (weight reloads, /collective_rpc), open to anyone who reaches its port. Set the same "
            f"secret on both sides: {TOKEN_ENV} in the environment of the server (or `trl-soup serve-behavior "
            f"--token-file PATH`) and of every training process (or SOUPConfig.behavior_server_token); or reach the "
            "server through a 127.0.0.1 address (e.g. an SSH tunnel). docs/vllm_server.md, 'Several nodes'."
        )
    if parsed.scheme != "https":
        return (
            f"{option}: the token for the server at {url} crosses the network in clear text (http). Serve TLS "
            "(`trl-soup serve-behavior --ssl-keyfile KEY --ssl-certfile CERT`, then an https:// URL) unless the "
            "network is private."
        )
    return None


def check_token(token: str, source: str) -> str:
    """``token`` if it is usable in an HTTP header (non-empty, printable ASCII, no spaces); else ValueError naming
    ``source`` (never the token)."""
    if not isinstance(token, str) or not token or not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(
            f"The server token from {source} is invalid: it must be a non-empty string of printable ASCII characters "
            "without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
        )
    return token


def read_token_file(path: str) -> str:
    """The token in the file at ``path`` (surrounding whitespace, such as a final newline, removed)."""
    with open(path) as f:
        return check_token(f.read().strip(), f"the token file {path}")


def client_token(configured: str | None) -> str | None:
    """The token a client sends: ``configured`` (``SOUPConfig.behavior_server_token``), else ``TRL_SOUP_SERVER_TOKEN``
    from the environment, else None."""
    if configured is not None:
        return check_token(configured, "behavior_server_token")
    token = os.environ.get(TOKEN_ENV)
    return check_token(token, TOKEN_ENV) if token else None


def server_token(environ=os.environ) -> str | None:
    """The token a server requires: the file named by ``TRL_SOUP_SERVER_TOKEN_FILE`` in ``environ``, else
    ``TRL_SOUP_SERVER_TOKEN``; None without either."""
    if environ.get(TOKEN_FILE_ENV):
        return read_token_file(environ[TOKEN_FILE_ENV])
    token = environ.get(TOKEN_ENV)
    return check_token(token, TOKEN_ENV) if token else None


def auth_headers(token: str | None) -> dict[str, str]:
    """The request headers that carry ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class TokenAuthMiddleware:
    """ASGI middleware for vLLM's server (``--middleware trl_soup.server_auth.TokenAuthMiddleware``): every HTTP and
    WebSocket request but ``GET /health`` must carry ``Authorization: Bearer <token>``, else HTTP 401 (a WebSocket is
    closed before it opens). Tokens are compared in constant time. The token comes from :func:`server_token`; a
    server without one refuses to build its app (fail closed)."""

    def __init__(self, app, token: str | None = None):
        self.app = app
        token = token or server_token()
        if not token:
            raise RuntimeError(f"{MIDDLEWARE} needs a token: set {TOKEN_ENV} or {TOKEN_FILE_ENV} for the server.")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, scope) -> bool:
        given = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
        scheme, _, credentials = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(b"Bearer " + credentials, self._expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path") or "")
        if (path in OPEN_PATHS and scope.get("method") in ("GET", "HEAD")) or self._authorized(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": "Unauthorized: this server needs 'Authorization: Bearer <token>'."}).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
