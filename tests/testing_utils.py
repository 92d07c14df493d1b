"""Test helpers (not a test file, not fixtures: those live in conftest.py).

Imported as ``from testing_utils import ...`` by the test files (pytest puts tests/ on sys.path) and by the
multi-process scripts under tests/scripts/ through tests/scripts/common.py, which puts tests/ on sys.path for
`accelerate launch`.

- ``TEST_DEFAULTS`` / ``SCRIPT_DEFAULTS``: the SOUPConfig every test starts from (``soup_args``) and the one the
  multi-process scripts start from (``script_args``): one base dict plus the script's explicit overrides.
- ``server_args``: ``soup_args`` for a run against a behavior server.
- ``SEQUENCE_LEVEL_OPTIONS``: the GRPO options defined with the mixed denominator of Eq. 5 (docs/equations.md).
- ``digit_share_reward``, ``reference_logps``, ``batch_reference_logps``: a cheap reward and an independent scoring
  forward (of a trainer batch's tensors).
- ``build_prompt_dataset``, ``toy_trainer``: the prompt set of the tests and a trainer on it (the ``prompt_dataset``
  and ``make_trainer`` fixtures, the module-scoped ``trained``, the multi-process scripts).
- ``RecordingTrainer``: a SOUPTrainer that records every generation batch.
- ``PROBE``, ``probe_logps``, ``learner_probe_logps``: the fixed sequence a behavior server is scored on.
- ``require_vllm``: the one marker for tests that need vLLM (built on first use, see ``__getattr__``).
"""

from __future__ import annotations

import pytest
import torch

from trl_soup import SOUPConfig, SOUPTrainer

__all__ = [  # and require_vllm, built on first use
    "PROBE",
    "SCRIPT_DEFAULTS",
    "SEQUENCE_LEVEL_OPTIONS",
    "TEST_DEFAULTS",
    "RecordingTrainer",
    "batch_reference_logps",
    "build_prompt_dataset",
    "digit_share_reward",
    "learner_probe_logps",
    "probe_logps",
    "reference_logps",
    "script_args",
    "server_args",
    "soup_args",
    "toy_trainer",
]

TEST_DEFAULTS = dict(
    use_cpu=True,
    report_to="none",
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=10,
    learning_rate=5e-3,
    temperature=0.8,
    logging_steps=1,
    save_strategy="no",
    seed=0,
    data_seed=0,
    bf16=False,
    disable_tqdm=True,
)
"""The small, fast, deterministic CPU run of the in-process tests; each test overrides what it tests."""

SCRIPT_DEFAULTS = {
    **TEST_DEFAULTS,
    "per_device_train_batch_size": 4,
    "max_completion_length": 8,
    "temperature": 1.0,
    "dataloader_num_workers": 0,
}
"""What every multi-process script under tests/scripts/ starts from: ``TEST_DEFAULTS`` with these overrides."""


def soup_args(tmp_path, **overrides) -> SOUPConfig:
    """``SOUPConfig(output_dir=tmp_path / "out", **TEST_DEFAULTS)`` with ``overrides`` applied."""
    return SOUPConfig(output_dir=str(tmp_path / "out"), **{**TEST_DEFAULTS, **overrides})


def server_args(tmp_path, url, **overrides) -> SOUPConfig:
    """``soup_args`` of a run whose behavior copy is the vLLM server at ``url``, refreshed through
    ``tmp_path / "refresh"``; ``overrides`` applied."""
    settings = dict(
        behavior_backend="vllm_server",
        behavior_server_base_url=str(url),
        behavior_refresh_dir=str(tmp_path / "refresh"),
    )
    return soup_args(tmp_path, **{**settings, **overrides})


SEQUENCE_LEVEL_OPTIONS = [
    dict(importance_sampling_level="sequence"),
    dict(loss_type="luspo", importance_sampling_level="sequence"),
    dict(loss_type="vespo"),
    dict(off_policy_mask_threshold=0.5),
]
"""GRPO options defined with the mixed denominator of Eq. 5 (docs/equations.md): accepted by SOUPConfig
(test_config.py), their loss and training tested in test_grpo_options.py."""


def script_args(output_dir: str, **overrides) -> SOUPConfig:
    """``SOUPConfig(output_dir, **SCRIPT_DEFAULTS)`` with ``overrides`` applied."""
    return SOUPConfig(output_dir=output_dir, **{**SCRIPT_DEFAULTS, **overrides})


def digit_share_reward(prompts, completions, **kwargs):
    """A cheap dense reward with spread even for a random model: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def build_prompt_dataset():
    """32 "a+b=" prompts of equal length: no left padding, so an independent forward sees exactly the trainer's
    positions."""
    from datasets import Dataset

    prompts = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)][:32]
    return Dataset.from_dict({"prompt": prompts})


def toy_trainer(trainer_class, model, args, dataset, tokenizer, **kwargs):
    """``trainer_class(model=model, reward_funcs=digit_share_reward, args=args, train_dataset=dataset,
    processing_class=tokenizer, **kwargs)``; ``kwargs`` may replace the reward, data set or tokenizer."""
    settings = dict(reward_funcs=digit_share_reward, train_dataset=dataset, processing_class=tokenizer)
    return trainer_class(model=model, args=args, **{**settings, **kwargs})


def reference_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    """Independent scoring: a plain forward, temperature-scaled log-softmax, gathered at the completion tokens."""
    with torch.no_grad():
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        logits = logits[:, prompt_ids.size(1) - 1 : -1] / temperature
        logps = torch.log_softmax(logits, dim=-1)
        per_token = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        probs = logps.exp()
        entropy = -(probs * logps).sum(-1)
    return per_token, entropy


def batch_reference_logps(model, batch, temperature):
    """``reference_logps`` of ``model`` on a trainer batch's prompt and completion ids and masks."""
    return reference_logps(
        model,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
        temperature,
    )


class RecordingTrainer(SOUPTrainer):
    """A SOUPTrainer that appends one record (a dict) per generation batch to ``self.records``:

    - ``"index"``: the generation batch index; ``"age"``: index % behavior_refresh_interval (0: right after a refresh);
    - ``"inputs"``: the examples the batch was generated from;
    - ``"batch"``: the output that reaches the loss, tensors cloned (not detached); only ``batch_keys`` if given (those
      that are not None);
    - ``"relay"``: ``last_relay_record`` (None on on-policy batches);
    - what the hooks add: ``record_before(inputs)`` runs before the batch is generated (state in force while it is),
      ``record_after(record)`` once the record above is complete.

    ``training_only``: batches generated outside training (evaluation) are not recorded; ``relay_only``: only relay
    batches are. ``record_before`` runs for every batch, ``record_after`` only for recorded ones.
    """

    def __init__(self, *args, training_only: bool = False, relay_only: bool = False, batch_keys=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self.training_only, self.relay_only, self.batch_keys = training_only, relay_only, batch_keys

    @property
    def batches(self) -> list[dict]:
        """The recorded batches, in order."""
        return [record["batch"] for record in self.records]

    def record_before(self, inputs) -> dict:
        return {}

    def record_after(self, record) -> dict:
        return {}

    def _generate_and_score_completions(self, inputs):
        index = self.generation_batch_index
        before = self.record_before(inputs)
        output = super()._generate_and_score_completions(inputs)
        if (self.training_only and not self.model.training) or (self.relay_only and self.last_relay_record is None):
            return output
        if self.batch_keys is None:
            batch = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in output.items()}
        else:
            batch = {k: output[k].clone() for k in self.batch_keys if output.get(k) is not None}
        record = {
            "index": index,
            "age": index % self.args.behavior_refresh_interval,
            "inputs": inputs,
            "batch": batch,
            "relay": self.last_relay_record,
            **before,
        }
        record.update(self.record_after(record))
        self.records.append(record)
        return output


PROBE = "copy:31415926=31415926"
"""The fixed sequence a behavior server's weights are checked on."""


def probe_logps(url, tokenizer, model_name, **client_kwargs):
    """log-probs (temperature 1) the server gives to the tokens of ``PROBE``; ``client_kwargs`` (``token``,
    ``ca_file``) go to the client."""
    from trl_soup.behavior.server_client import BehaviorServerClient

    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    client = BehaviorServerClient(url, **client_kwargs)
    choice = client.complete(
        {"model": model_name, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0}
    )[0]
    scored = zip(choice["prompt_logprobs"][1:], ids[1:], strict=True)  # the first prompt token has no log-prob
    return torch.tensor([entry[str(token)]["logprob"] for entry, token in scored])


def learner_probe_logps(model, tokenizer):
    """log-probs (temperature 1) a forward of ``model`` gives to the tokens of ``PROBE``."""
    ids = torch.tensor([tokenizer(PROBE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)


def __getattr__(name):
    """``require_vllm`` is built on first import: `vllm_available` imports vLLM in a subprocess (about 5 s), which
    only the modules that use the marker should pay (not every test file, nor every rank of a script)."""
    if name == "require_vllm":
        from vllm_server import vllm_available

        marker = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
        globals()["require_vllm"] = marker
        return marker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
