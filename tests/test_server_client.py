"""The behavior server's HTTP client and start-up checks, against real local HTTP endpoints (no vLLM needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from datasets import Dataset
from testing_utils import soup_args

from trl_soup.behavior.server_client import BehaviorServerClient, BehaviorServerError, check_reachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FlakyServer:
    """A real HTTP server on loopback answering 500 for the first `failures` calls, then 200 with `{"ok": n}`."""

    def __init__(self, failures: int):
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.calls += 1
                code = 500 if outer.calls <= failures else 200
                body = json.dumps({"ok": outer.calls}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_unreachable_server_fails_within_timeout_naming_address():
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(BehaviorServerError, match=url.replace(".", r"\.")):
        BehaviorServerClient(url).wait_until_healthy(total_timeout=2.0)
    assert time.monotonic() - start < 10


def test_bounded_retries_then_success():
    with _FlakyServer(failures=2) as server:
        client = BehaviorServerClient(server.url, max_retries=3, backoff=0.01)
        assert client.request("POST", "/anything", {"x": 1}) == {"ok": 3}
        assert server.calls == 3


def test_bounded_retries_then_clear_error():
    with _FlakyServer(failures=100) as server:
        client = BehaviorServerClient(server.url, max_retries=2, backoff=0.01)
        with pytest.raises(BehaviorServerError, match="after 3 attempts") as error:
            client.request("POST", "/v1/completions", {})
        assert server.url in str(error.value)
        assert server.calls == 3  # 1 try + 2 retries, not more


def test_trainer_refuses_unreachable_behavior_server(tmp_path, make_trainer):
    port = _free_port()
    args = soup_args(
        tmp_path, behavior_backend="vllm_server", behavior_server_port=port, behavior_server_timeout=2.0, max_steps=1
    )
    start = time.monotonic()
    with pytest.raises(BehaviorServerError, match=f"127.0.0.1:{port}"):
        make_trainer(args)
    assert time.monotonic() - start < 30


def test_unreachable_server_refused_before_the_model_loads(tmp_path):
    """Default timeouts (240 s for /health): nothing listens at the address, so the trainer fails within the connect
    timeout, before it tries to load the model (a Hub id that cannot be loaded offline: loading it first would raise
    OSError instead)."""
    from trl_soup import SOUPTrainer

    port = _free_port()
    args = soup_args(tmp_path, behavior_backend="vllm_server", behavior_server_port=port, max_steps=1)
    assert args.behavior_server_timeout == 240.0 and args.behavior_server_connect_timeout == 10.0
    start = time.monotonic()
    with pytest.raises(BehaviorServerError, match=rf"127\.0\.0\.1:{port}.*behavior_server_connect_timeout"):
        SOUPTrainer(
            model="nobody/not-a-model",
            reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["1+1="]}),
        )
    assert 9 <= time.monotonic() - start < 30  # it retried for the 10 s connect timeout, not the 240 s one


def test_check_reachable_passes_a_listening_port_and_waits_for_one_that_opens():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"http://127.0.0.1:{listening.getsockname()[1]}", timeout=1.0)  # returns: it listens
    port = _free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    opener = threading.Timer(0.5, lambda: (server.bind(("127.0.0.1", port)), server.listen()))
    opener.start()
    try:
        start = time.monotonic()
        check_reachable(f"http://127.0.0.1:{port}", timeout=20.0)  # a server that binds its port a moment later
        assert time.monotonic() - start < 15
    finally:
        opener.join()
        server.close()
    with pytest.raises(BehaviorServerError, match=r"tried for 0\.5 s"):
        check_reachable(f"http://127.0.0.1:{_free_port()}", timeout=0.5)


def test_samples_from_server_choices(tmp_path, tokenizer, make_model):
    """Parsing of /v1/completions choices (token ids, sampled and top-k log-probs) into BehaviorSamples."""
    from types import SimpleNamespace

    from trl_soup.behavior.context import BehaviorContext, SamplingSettings
    from trl_soup.behavior.vllm_server import VLLMServerBehaviorBackend

    backend = VLLMServerBehaviorBackend.__new__(VLLMServerBehaviorBackend)  # parsing needs no server
    eos = tokenizer.eos_token_id
    sampling = SamplingSettings(
        temperature=1.0, max_completion_length=8, eos_token_ids=(eos,), pad_token_id=tokenizer.pad_token_id
    )
    accelerator = SimpleNamespace(device=torch.device("cpu"))
    context = BehaviorContext(None, tokenizer, accelerator, model=None, sampling=sampling, score=None)
    backend.context, backend.base_url, backend.vocab_size = context, "http://x", 4
    half = float(torch.log(torch.tensor(0.5)))
    choices = [
        {
            "token_ids": [7, eos],
            "logprobs": {
                "tokens": ["token_id:7", f"token_id:{eos}"],
                "token_logprobs": [half, -0.1],
                "top_logprobs": [{"token_id:7": half, "token_id:8": half}, {f"token_id:{eos}": -0.1}],
            },
        },
        {
            "token_ids": [9],
            "logprobs": {
                "tokens": ["token_id:9"],
                "token_logprobs": [-2.0],
                "top_logprobs": [{"token_id:5": -0.5, "token_id:6": -1.0}],
            },
        },
    ]
    samples = backend._samples_from_choices(choices, top_k=2)
    assert samples.completion_ids.tolist() == [[7, eos], [9, tokenizer.pad_token_id]]
    assert samples.mask.tolist() == [[1, 1], [1, 0]]
    torch.testing.assert_close(samples.per_token_logps, torch.tensor([[half, -0.1], [-2.0, 0.0]]))
    assert samples.ended_with_eos.tolist() == [True, False]
    # Two tokens of probability 1/2 and nothing missing: entropy ln 2 exactly.
    assert samples.entropies[0, 0].item() == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-6)
    assert samples.entropies[1, 1].item() == 0.0  # padding


def test_unreachable_teacher_server_is_named_as_the_teacher(tmp_path):
    """It was reported as "the behavior server" with the behavior options named (issue 24, item 5)."""
    from trl_soup import SOUPTrainer

    url = f"http://127.0.0.1:{_free_port()}"
    args = soup_args(
        tmp_path, prefix_source="teacher", prefix_teacher_base_url=url, behavior_server_connect_timeout=0.5
    )
    with pytest.raises(BehaviorServerError) as error:
        SOUPTrainer(
            model="nobody/not-a-model",
            reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["1+1="]}),
        )
    message = str(error.value)
    assert f"Nothing answers at the teacher server address {url}" in message and "prefix_teacher_base_url" in message
    assert "behavior_server_base_url" not in message and "behavior server" not in message
