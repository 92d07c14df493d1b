"""PEFT: the behavior copy is a second, frozen adapter next to the trained one (no second model)."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from testing_utils import RecordingTrainer, batch_reference_logps, soup_args  # noqa: E402

from trl_soup.behavior.local import BEHAVIOR_ADAPTER  # noqa: E402


def _lora():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


class RecordingPeftTrainer(RecordingTrainer):
    """Records, besides the batch, the trained adapter in force while it is generated and the behavior one after."""

    def _adapter(self, name):
        model = self.accelerator.unwrap_model(self.model)
        return {k: v.detach().clone() for k, v in model.named_parameters() if f".{name}." in k}

    def record_before(self, inputs):
        return {"trained": self._adapter("default")}

    def record_after(self, record):
        return {"behavior": self._adapter(BEHAVIOR_ADAPTER)}


def test_peft_behavior_adapter(tmp_path, make_model, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=4, learning_rate=5e-2)
    trainer = make_trainer(args, trainer_class=RecordingPeftTrainer, peft_config=_lora())
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default", BEHAVIOR_ADAPTER}
    trainer.train()

    # The behavior adapter is frozen and never handed to the optimizer.
    behavior_params = [p for n, p in model.named_parameters() if f".{BEHAVIOR_ADAPTER}." in n]
    assert behavior_params and not any(p.requires_grad for p in behavior_params)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in behavior_params}
    assert model.active_adapter == "default"

    ages = [r["age"] for r in trainer.records]
    assert ages == [0, 1, 0, 1]
    for r in trainer.records:
        pairs = [
            (r["trained"][k], r["behavior"][k.replace(".default.", f".{BEHAVIOR_ADAPTER}.")]) for k in r["trained"]
        ]
        if r["age"] == 0:  # refreshed: the behavior adapter equals the trained one
            assert all(torch.equal(a, b) for a, b in pairs)
            assert int(r["batch"]["prefix_mask"].sum()) == 0
        else:  # one optimizer step later the trained adapter has moved on, the behavior one has not
            assert any(not torch.equal(a, b) for a, b in pairs)
            assert int(r["batch"]["prefix_mask"].sum()) > 0

    # Behavior log-probs equal an independent forward of base + the recorded behavior adapter.
    relay = trainer.records[3]
    independent = get_peft_model(make_model(seed=0), _lora())
    with torch.no_grad():
        for name, param in independent.named_parameters():
            if ".default." in name:
                param.copy_(relay["behavior"][name.replace(".default.", f".{BEHAVIOR_ADAPTER}.")])
    independent.eval()
    b = relay["batch"]
    ref, _ = batch_reference_logps(independent, b, args.temperature)
    prefix = b["prefix_mask"].bool()
    torch.testing.assert_close(b["behavior_per_token_logps"][prefix], ref[prefix], atol=1e-5, rtol=1e-5)
