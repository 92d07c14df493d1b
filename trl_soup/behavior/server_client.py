"""A small HTTP client for the behavior vLLM server (OpenAI-compatible API plus vLLM's dev-mode endpoints).

Standard library only, so the training process needs neither vLLM nor ``requests``. Every call is retried a bounded
number of times with exponential back-off; then a :class:`BehaviorServerError` names the address and what failed.
Every request carries the server's token when one is set (``trl_soup.server_auth``), and ``https://`` addresses are
verified against the system's CA certificates or ``ca_file``.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from ..server_auth import TOKEN_ENV, auth_headers


class BehaviorServerError(RuntimeError):
    """The behavior server could not be reached, or answered with an error."""


def check_reachable(base_url: str, timeout: float, server: str = "behavior") -> None:
    """Fail fast when nothing listens at ``base_url``: open a TCP connection to its host and port, retrying for up to
    ``timeout`` seconds (``behavior_server_connect_timeout``), else raise :class:`BehaviorServerError` that names the
    ``server`` ("behavior" or "teacher") and the options that set its address.

    Called before the model loads. A vLLM server that is still loading its model already holds its port, so it
    passes; the trainer then waits for ``/health`` up to ``behavior_server_timeout`` once the model has loaded.
    """
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=max(0.1, deadline - time.monotonic())):
                return
        except OSError as error:
            last_error = error
        if time.monotonic() >= deadline:
            options = (
                "prefix_teacher_base_url"
                if server == "teacher"
                else "behavior_server_base_url (or behavior_server_host / behavior_server_port)"
            )
            raise BehaviorServerError(
                f"Nothing answers at the {server} server address {base_url} (tried for {timeout:g} s, "
                f"behavior_server_connect_timeout; {last_error}). Start the server first (`trl-soup serve-behavior "
                f"--model MODEL` or `python -m trl_soup.serve_behavior --model MODEL`), or set {options} to its "
                "address."
            )
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


_UNAUTHORIZED_HINT = (
    f" The server requires a token: set {TOKEN_ENV} in the training processes' environment (or "
    f"SOUPConfig.behavior_server_token) to the token the server was started with."
)


class BehaviorServerClient:
    """``token``: sent as ``Authorization: Bearer <token>`` on every request (kept out of messages and ``repr``).
    ``ca_file``: CA certificates that verify an ``https://`` server (None: the system's, or ``SSL_CERT_FILE``)."""

    def __init__(
        self,
        base_url: str,
        max_retries: int = 3,
        backoff: float = 1.0,
        request_timeout: float = 600.0,
        token: str | None = None,
        ca_file: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.request_timeout = request_timeout
        self._headers = {"Content-Type": "application/json", **auth_headers(token)}
        https = urlparse(self.base_url).scheme == "https"
        self._ssl_context = ssl.create_default_context(cafile=ca_file) if https else None

    # ------------------------------------------------------------------------------------------------ transport
    def _once(self, method: str, path: str, payload: dict | None, timeout: float):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self._headers)
        with urllib.request.urlopen(request, timeout=timeout, context=self._ssl_context) as response:
            body = response.read()
        try:
            return json.loads(body) if body else {}
        except ValueError:  # some endpoints (LoRA loading) answer plain text
            return {"text": body.decode(errors="replace")}

    def request(self, method: str, path: str, payload: dict | None = None, retries: int | None = None):
        """One HTTP call with bounded retries on connection errors and 5xx answers; 4xx answers fail at once."""
        retries = self.max_retries if retries is None else retries
        last_error: Exception | None = None
        for attempt in range(retries + 1):
            try:
                return self._once(method, path, payload, self.request_timeout)
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:2000]
                if error.code < 500:
                    hint = _UNAUTHORIZED_HINT if error.code == 401 else ""
                    raise BehaviorServerError(
                        f"The behavior server at {self.base_url} refused {method} {path} (HTTP {error.code}): "
                        f"{detail}{hint}"
                    ) from None
                last_error = BehaviorServerError(f"HTTP {error.code}: {detail}")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                last_error = error
            if attempt < retries:
                time.sleep(self.backoff * 2**attempt)
        raise BehaviorServerError(
            f"The behavior server at {self.base_url} did not answer {method} {path} after {retries + 1} attempts "
            f"({last_error}). Is it still running? Restart it and resume from the last checkpoint."
        )

    # ------------------------------------------------------------------------------------------------ endpoints
    def wait_until_healthy(self, total_timeout: float, interval: float = 1.0) -> None:
        """Poll GET /health until it answers 200, or fail after ``total_timeout`` seconds naming the address."""
        deadline = time.monotonic() + total_timeout
        last_error: Exception | None = None
        while True:
            try:
                self._once("GET", "/health", None, timeout=max(0.5, min(5.0, total_timeout)))
                return
            except Exception as error:  # noqa: BLE001 - any failure means "not up yet"
                last_error = error
            if time.monotonic() >= deadline:
                raise BehaviorServerError(
                    f"The behavior vLLM server at {self.base_url} is unreachable after {total_timeout:g} s "
                    f"({last_error}). Start one with `python -m trl_soup.serve_behavior --model MODEL` and set "
                    "behavior_server_base_url (or behavior_server_host / behavior_server_port) to its address."
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def models(self) -> list[dict]:
        return self.request("GET", "/v1/models")["data"]

    def tokenize(self, model: str, text: str) -> list[int]:
        return self.request("POST", "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})[
            "tokens"
        ]

    def complete(self, payload: dict) -> list[dict]:
        return self.request("POST", "/v1/completions", payload)["choices"]

    def reload_weights(self, weights_path: str) -> None:
        # Never retried: a failed reload leaves vLLM's layers torn down (docs/vllm_cpu_notes.md, "Failed reloads").
        self.request(
            "POST",
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": weights_path}},
            retries=0,
        )

    def reset_prefix_cache(self) -> None:
        self.request("POST", "/reset_prefix_cache")

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load the adapter at ``path`` as ``name``, in place of one of that name the server may still hold (from an
        earlier run against the same server: names restart at ``soup-behavior-1``)."""
        self.request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": True})

    def unload_lora_adapter(self, name: str) -> None:
        self.request("POST", "/v1/unload_lora_adapter", {"lora_name": name})


def trl_vllm_client(base_url: str, token: str | None = None, ca_file: str | None = None, **kwargs):
    """TRL's ``VLLMClient`` (the ``"nccl"`` refresh) whose HTTP requests carry ``token`` and verify ``https://`` with
    ``ca_file``. Its session gets both as it is created: ``VLLMClient.__init__`` already calls the server. Imports
    TRL's client (and vLLM) on call."""
    from .._compat import trl_vllm_client_class

    class AuthenticatedVLLMClient(trl_vllm_client_class()):
        @property
        def session(self):
            return self._session

        @session.setter
        def session(self, session):
            session.headers.update(auth_headers(token))
            if ca_file:  # without trust_env, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override `verify`
                session.verify, session.trust_env = ca_file, False
            self._session = session

        def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0) -> None:
            # TRL's check uses a bare `requests.get`, without the CA file; /health needs no token.
            BehaviorServerClient(self.base_url, ca_file=ca_file).wait_until_healthy(total_timeout, retry_interval)

    return AuthenticatedVLLMClient(base_url=base_url, **kwargs)
