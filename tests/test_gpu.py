"""GPU-only checks, skipped without CUDA (CI has no GPU): bf16 numerics of relay batches, and the NCCL refresh of the
vLLM behavior server (also needs vLLM with CUDA, which the lent GPU hosts do not have: see docs/vllm_server.md).

Run on a GPU machine with trl_soup's test dependencies installed:

    python -m pytest -q tests/test_gpu.py -ra
"""

from __future__ import annotations

import pytest
import torch
from testing_utils import (
    RecordingTrainer,
    batch_reference_logps,
    learner_probe_logps,
    probe_logps,
    require_vllm,
    soup_args,
)

pytestmark = pytest.mark.gpu


def test_bf16_relay_batches_match_an_independent_bf16_forward(tmp_path, make_model, make_trainer):
    """In bf16 on CUDA the behavior log-probs of prefix tokens are those of the frozen copy (same dtype, same kernels),
    within bf16 resolution, and the loss stays finite over a few relay windows."""
    model = make_model(seed=0).to(torch.bfloat16)
    args = soup_args(tmp_path, use_cpu=False, bf16=True, behavior_refresh_interval=3, max_steps=6)
    trainer = make_trainer(args, model=model, trainer_class=RecordingTrainer, relay_only=True)
    snapshots = []
    original_refresh = trainer.behavior.refresh

    def refresh():  # keep the weights each refresh gave the behavior copy
        original_refresh()
        snapshots.append(
            {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
        )

    trainer.behavior.refresh = refresh
    trainer.train()
    assert trainer.batches, "no relay batch was produced"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # The last relay batch was sampled by the copy of the last refresh.
    reference = make_model(seed=0).to(torch.bfloat16).cuda()
    reference.load_state_dict(snapshots[-1])
    batch = trainer.batches[-1]
    ref, _ = batch_reference_logps(reference, batch, args.temperature)
    prefix = batch["prefix_mask"].bool()
    assert prefix.any()
    torch.testing.assert_close(
        batch["behavior_per_token_logps"][prefix].float(), ref[prefix].float(), atol=5e-2, rtol=0
    )


@require_vllm
def test_nccl_refresh_matches_the_learner(tmp_path, tokenizer, make_model, make_trainer):
    """behavior_refresh_method="nccl": after a refresh the server scores a fixed sequence like the learner."""
    from vllm_server import start_vllm_server

    from trl_soup.toy import save_toy_model

    served = save_toy_model(tmp_path / "served", model=make_model(seed=0), tokenizer=tokenizer)
    with start_vllm_server(served) as url:
        args = soup_args(
            tmp_path,
            use_cpu=False,
            behavior_backend="vllm_server",
            behavior_server_base_url=url,
            behavior_refresh_method="nccl",
            behavior_refresh_interval=2,
            max_steps=3,
        )
        trainer = make_trainer(args)
        refreshed = []
        original_refresh = trainer.behavior.refresh

        def refresh():  # the learner's weights as the server received them
            original_refresh()
            refreshed.append(
                {
                    k: v.detach().float().cpu().clone()
                    for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
                }
            )

        trainer.behavior.refresh = refresh
        trainer.train()  # refreshes before steps 1 and 3
        assert len(refreshed) == 2
        at_refresh = make_model(seed=0)
        at_refresh.load_state_dict(refreshed[-1])
        before = learner_probe_logps(make_model(seed=0), tokenizer)
        expected = learner_probe_logps(at_refresh, tokenizer)
        served_logps = probe_logps(url, tokenizer, trainer.behavior.model_name)
        assert (expected - before).abs().max() > 1e-3  # the learner moved before the second refresh
        torch.testing.assert_close(served_logps, expected, atol=1e-3, rtol=0)


@require_vllm
def test_vllm_server_continuations(tmp_path, tokenizer, make_model, make_trainer):
    """use_vllm=True, vllm_mode="server": continuations come from a vLLM server (TRL syncs it over NCCL); on relay
    batches every prefix token has importance-sampling ratio exactly 1 and training runs two relay windows."""
    from urllib.parse import urlparse

    from vllm_server import start_vllm_server

    from trl_soup.toy import save_toy_model

    served = save_toy_model(tmp_path / "served", model=make_model(seed=0), tokenizer=tokenizer)
    with start_vllm_server(served) as url:
        address = urlparse(str(url))
        args = soup_args(
            tmp_path,
            use_cpu=False,
            use_vllm=True,
            vllm_mode="server",
            vllm_server_base_url=f"http://{address.hostname}:{address.port}",
            behavior_refresh_interval=3,
            max_steps=6,
        )
        trainer = make_trainer(args, trainer_class=RecordingTrainer, relay_only=True)
        trainer.train()
    assert len(trainer.batches) == 4  # steps 2, 3, 5, 6
    for batch in trainer.batches:
        prefix = batch["prefix_mask"].bool()
        assert prefix.any()
        ratio = batch.get("importance_sampling_ratio")
        if ratio is not None:
            assert torch.all(ratio.expand_as(prefix)[prefix] == 1.0)
