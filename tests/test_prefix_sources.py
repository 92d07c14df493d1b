"""Prefixes from outside the run (issue 14): the dataset source (references, log-prob columns, scorers), the source
mixture, and the refusals; the teacher source against a real vLLM server is in tests/test_vllm_server.py.

Each relay row's prefix must be the first k tokens of its source's response (the tokenised reference here), and its
denominators what the issue says: the log-prob column, or an independent forward of the scorer's weights.
"""

from __future__ import annotations

import os

import pytest
import torch
from testing_utils import RecordingTrainer, build_prompt_dataset, reference_logps, soup_args

from trl_soup import available_prefix_sources, register_prefix_source
from trl_soup.sources import choose_sources, reference_row_logps, reference_token_ids, source_weights
from trl_soup.toy import build_tiny_model, save_toy_model

# ---------------------------------------------------------------------------------------------- pure


def test_reference_token_ids(tokenizer):
    eos = tokenizer.eos_token_id
    text = reference_token_ids("12+3", tokenizer, eos, "ref")
    assert text == tokenizer("12+3", add_special_tokens=False)["input_ids"] + [eos] and len(text) == 5
    assert reference_token_ids([7, 8, 9], tokenizer, eos, "ref") == [7, 8, 9]  # ids stay ids, no EOS added
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "42"}]
    assert reference_token_ids(messages, tokenizer, eos, "ref") == reference_token_ids("42", tokenizer, eos, "ref")
    for missing in (None, "", []):
        assert reference_token_ids(missing, tokenizer, eos, "ref") is None
    with pytest.raises(TypeError, match="prefix_dataset_column='ref' holds a float"):
        reference_token_ids(3.5, tokenizer, eos, "ref")
    assert reference_row_logps([-1, -2.5], 2, "lp") == [-1.0, -2.5]
    with pytest.raises(ValueError, match=r"prefix_logps_column='lp' must hold one log-prob per token.*has 1 for 2"):
        reference_row_logps([-1.0], 2, "lp")


def test_references_outside_the_vocabulary_or_positive_logps_are_refused(tokenizer):
    """Issue 24, item 4 and 6: an id outside the vocabulary was an IndexError deep in the embedding, and positive
    values in the log-prob column were taken as log-probs (ratios above 1 with no warning)."""
    eos, vocabulary = tokenizer.eos_token_id, len(tokenizer)
    assert reference_token_ids([0, vocabulary - 1], tokenizer, eos, "ref") == [0, vocabulary - 1]
    for bad in (vocabulary, -1):
        with pytest.raises(ValueError, match=rf"'ref' holds token id {bad}, outside .*ids 0 to {vocabulary - 1}"):
            reference_token_ids([3, bad], tokenizer, eos, "ref")
    assert reference_row_logps([0.0, -3.0], 2, "lp") == [0.0, -3.0]
    for bad in (0.5, float("nan")):
        with pytest.raises(ValueError, match=r"prefix_logps_column='lp' holds .*log-probabilities are <= 0"):
            reference_row_logps([-1.0, bad], 2, "lp")


def test_source_weights_and_shares():
    class Args:
        prefix_source = "behavior"
        prefix_source_weights = {"dataset": 3, "behavior": 1, "teacher": 0}

    assert source_weights(Args) == {"behavior": 0.25, "dataset": 0.75}  # sorted, normalised, zero weights dropped
    Args.prefix_source_weights = None
    assert source_weights(Args) == {"behavior": 1.0}
    choice = choose_sources([0.25, 0.75], 4000, torch.Generator().manual_seed(0))
    share = choice.count(1) / 4000
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5, share  # within 4 standard errors
    assert choose_sources([1.0], 5, torch.Generator()) == [0] * 5


def test_config_refusals_and_warnings(tmp_path):
    assert {"behavior", "dataset", "teacher", "on_policy"} <= set(available_prefix_sources())
    with pytest.raises(ValueError, match=r"prefix_source='expert' is not a registered source.*'dataset'"):
        soup_args(tmp_path, prefix_source="expert")
    with pytest.raises(ValueError, match="prefix_source_weights=.* is invalid"):
        soup_args(tmp_path, prefix_source_weights={"behavior": -1.0})
    with pytest.raises(ValueError, match="prefix_source_weights=.* is invalid"):
        soup_args(tmp_path, prefix_source_weights={"nobody": 1.0})
    args = soup_args(tmp_path, prefix_source_weights='{"behavior": 1, "dataset": 1}')  # JSON from a command line
    assert args.prefix_source_weights == {"behavior": 1, "dataset": 1}
    with pytest.raises(ValueError, match="prefix_strategy='entropy' cannot cut dataset prefixes"):
        soup_args(tmp_path, prefix_source="dataset", prefix_logps_column="lp", prefix_strategy="entropy")
    with pytest.raises(ValueError, match="prefix_source 'teacher' needs prefix_teacher_base_url"):
        soup_args(tmp_path, prefix_source="teacher")
    with pytest.raises(ValueError, match="prefix_dataset_fallback='teacher' is not supported"):
        soup_args(tmp_path, prefix_source="dataset", prefix_dataset_fallback="teacher")
    with pytest.raises(ValueError, match="behavior_prefetch=2 prefetches the behavior copy's samples only"):
        soup_args(
            tmp_path,
            prefix_source="dataset",
            behavior_prefetch=2,
            behavior_backend="vllm_server",
            behavior_server_base_url="http://127.0.0.1:9",
        )
    with pytest.warns(UserWarning, match="prefix_logps_column='lp' is ignored"):
        soup_args(tmp_path, prefix_logps_column="lp")
    with pytest.raises(ValueError, match="built-in prefix source"):
        register_prefix_source("dataset", lambda trainer: None)


def _dataset(references, logps=None):
    dataset = build_prompt_dataset()
    dataset = dataset.add_column("reference_completion", references(dataset["prompt"]))
    if logps is not None:
        dataset = dataset.add_column("reference_logps", logps(dataset["reference_completion"]))
    return dataset


def _text_references(prompts):
    # Rows 0, 4, 8, ... have no reference (fallback); the others a text answer of varying length.
    return [None if i % 4 == 0 else str(eval(p[:-1])) * (1 + i % 3) for i, p in enumerate(prompts)]


def test_missing_column_refused_before_the_model_loads(tmp_path, tokenizer):
    from trl_soup import SOUPTrainer

    dataset = _dataset(_text_references)  # has reference_completion, not the columns named below
    for option, name in (("prefix_dataset_column", "answers"), ("prefix_logps_column", "logps")):
        args = soup_args(tmp_path, prefix_source="dataset", **{option: name})
        # The model is a path that does not exist: the column check must come first.
        with pytest.raises(ValueError, match=rf"{option}='{name}' is not a column of train_dataset \(found: "):
            SOUPTrainer(model=str(tmp_path / "no-model"), args=args, train_dataset=dataset, processing_class=tokenizer)


def test_a_column_without_any_reference_is_refused_before_the_model_loads(tmp_path, tokenizer):
    """Every reference None made the relay batches quietly on-policy (issue 24, item 6)."""
    from trl_soup import SOUPTrainer

    args = soup_args(tmp_path, prefix_source="dataset")
    for empty in (None, ""):
        dataset = _dataset(lambda prompts, empty=empty: [empty] * len(prompts))
        with pytest.raises(ValueError, match=r"prefix_dataset_column='reference_completion' holds no reference"):
            SOUPTrainer(model=str(tmp_path / "no-model"), args=args, train_dataset=dataset, processing_class=tokenizer)


def _check_dataset_rows(trainer, tokenizer, scorer=None, column_logps=False):
    """Every relay row: prefix = first k tokens of its tokenised reference (rows with one), denominators = the
    log-prob column or an independent forward of ``scorer``; rows without a reference have no prefix."""
    checked = 0
    for r in trainer.records:
        relay, batch = r["relay"], r["batch"]
        if relay is None:
            continue
        for i, row in enumerate(r["inputs"]):
            k = int(relay.prefix_lengths[i])
            ids = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
            reference = reference_token_ids(row["reference_completion"], tokenizer, tokenizer.eos_token_id, "ref")
            if reference is None:
                assert k == 0
                continue
            reference = reference[: trainer.max_completion_length]
            assert relay.behavior_completion_ids[i] == reference
            assert ids[:k] == reference[:k] and k > 0
            got = batch["behavior_per_token_logps"][i, :k]
            if column_logps:
                torch.testing.assert_close(got, torch.tensor(row["reference_logps"][:k]), atol=1e-6, rtol=0)
            checked += 1
        if scorer is not None:
            ref, _ = reference_logps(
                scorer,
                batch["prompt_ids"],
                batch["prompt_mask"],
                batch["completion_ids"],
                batch["completion_mask"],
                trainer.args.temperature,
            )
            prefix = batch["prefix_mask"].bool()
            assert (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < 1e-5
    assert checked > 0


@pytest.mark.slow
def test_dataset_prefixes_scored_by_the_initial_policy(tmp_path, tokenizer, make_trainer):
    dataset = _dataset(_text_references)
    args = soup_args(tmp_path, prefix_source="dataset", behavior_refresh_interval=2, max_steps=6)
    trainer = make_trainer(args, trainer_class=RecordingTrainer, train_dataset=dataset)
    initial = build_tiny_model(tokenizer, seed=0).eval()  # the learner's weights when the trainer was built
    trainer.train()
    _check_dataset_rows(trainer, tokenizer, scorer=initial)
    # The learner moved away from the scorer: the dataset prefix ratio is not 1.
    logged = [
        h["soup/log_ratio/prefix_abs_mean"] for h in trainer.state.log_history if "soup/log_ratio/prefix_abs_mean" in h
    ]
    assert logged and max(logged) > 1e-3


@pytest.mark.slow
def test_dataset_prefixes_with_a_log_prob_column(tmp_path, tokenizer, make_trainer):
    def ids(prompts):
        return [tokenizer(p[::-1], add_special_tokens=False)["input_ids"] for p in prompts]  # token ids

    def logps(references):
        return [[-0.1 * (t + 1) for t in range(len(r))] for r in references]

    dataset = _dataset(ids, logps)
    args = soup_args(
        tmp_path,
        prefix_source="dataset",
        prefix_logps_column="reference_logps",
        behavior_refresh_interval=2,
        max_steps=4,
    )
    trainer = make_trainer(args, trainer_class=RecordingTrainer, train_dataset=dataset)
    assert trainer.behavior.sources["dataset"].scorer is None  # no model is built to score
    trainer.train()
    _check_dataset_rows(trainer, tokenizer, column_logps=True)


@pytest.mark.slow
def test_dataset_prefixes_scored_by_a_named_model(tmp_path, tokenizer, make_trainer):
    scorer = build_tiny_model(tokenizer, seed=5)
    path = save_toy_model(str(tmp_path / "scorer"), model=scorer, tokenizer=tokenizer)
    dataset = _dataset(_text_references)
    args = soup_args(
        tmp_path, prefix_source="dataset", prefix_scorer_model=path, behavior_refresh_interval=2, max_steps=4
    )
    trainer = make_trainer(args, trainer_class=RecordingTrainer, train_dataset=dataset)
    trainer.train()
    _check_dataset_rows(trainer, tokenizer, scorer=scorer.eval())
    # A scorer with another vocabulary is refused when the trainer is built.
    other = build_tiny_model(tokenizer, seed=5)
    other.resize_token_embeddings(len(tokenizer) + 8)
    other_path = save_toy_model(str(tmp_path / "other"), model=other, tokenizer=tokenizer)
    args = soup_args(tmp_path, prefix_source="dataset", prefix_scorer_model=other_path, behavior_refresh_interval=2)
    with pytest.raises(ValueError, match="does not share the learner's tokenizer"):
        make_trainer(args, train_dataset=dataset)


class MixRecordingTrainer(RecordingTrainer):
    """Records, for each relay row the behavior copy wrote, what it samples for that row now (within the window)."""

    def record_after(self, record):
        relay = record["relay"]
        if relay is None:
            return {}
        batch = record["batch"]
        rows = [i for i, s in enumerate(relay.source_ids.tolist()) if self.behavior.names[s] == "behavior"]
        prompts = [batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist() for i in rows]
        behavior = self.behavior.sources["behavior"]
        samples = behavior.sample(prompts, self.max_completion_length, record["index"], 0)
        return {
            "behavior_rows": {
                i: samples.completion_ids[j][samples.mask[j].bool()].tolist() for j, i in enumerate(rows)
            }
        }


@pytest.mark.slow
def test_mixed_sources_rows_follow_their_source(tmp_path, tokenizer, make_trainer):
    dataset = _dataset(_text_references)
    args = soup_args(
        tmp_path,
        prefix_source_weights={"behavior": 0.5, "dataset": 0.5},
        behavior_refresh_interval=3,
        max_steps=9,
    )
    trainer = make_trainer(args, trainer_class=MixRecordingTrainer, train_dataset=dataset)
    trainer.train()
    names = trainer.behavior.names
    assert names == ["behavior", "dataset"]
    counts = [0, 0]
    for r in trainer.records:
        relay, batch = r["relay"], r["batch"]
        if relay is None:
            continue
        assert torch.equal(batch["prefix_source_id"].cpu(), relay.source_ids)
        for i, source in enumerate(relay.source_ids.tolist()):
            counts[source] += 1
            k = int(relay.prefix_lengths[i])
            if names[source] == "behavior":  # the behavior copy's own response for this row
                assert relay.behavior_completion_ids[i] == r["behavior_rows"][i]
            else:
                reference = reference_token_ids(
                    r["inputs"][i]["reference_completion"], tokenizer, tokenizer.eos_token_id, "ref"
                )
                assert k == 0 if reference is None else relay.behavior_completion_ids[i] == reference[:10]
    assert min(counts) > 0
    logged = [h for h in trainer.state.log_history if "soup/source/dataset/prefix_share" in h]
    assert logged and all(
        h["soup/source/dataset/prefix_share"] + h["soup/source/behavior/prefix_share"] == pytest.approx(1.0)
        for h in logged
    )


def _by_step(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


@pytest.mark.slow
def test_mixed_sources_resume_mid_window(tmp_path, make_trainer):
    dataset = _dataset(_text_references)
    settings = dict(
        prefix_source_weights={"behavior": 0.5, "dataset": 0.5},
        behavior_refresh_interval=3,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
    )
    full = make_trainer(soup_args(tmp_path / "full", **settings), train_dataset=dataset)
    full.train()
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-4")
    resumed = make_trainer(soup_args(tmp_path / "resumed", **settings), train_dataset=dataset)
    resumed.train(resume_from_checkpoint=checkpoint)
    for key in ("loss", "soup/source/dataset/prefix_share", "soup/log_ratio/prefix_abs_mean"):
        expected, got = _by_step(full, key), _by_step(resumed, key)
        for step in (5, 6):
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)


def test_registered_factory_that_returns_no_backend_is_named(tmp_path, make_trainer):
    """A factory returning None failed with a bare AttributeError at the first relay batch (issue 24, item 4); now
    the trainer refuses it when it builds the sources, naming the source and what the factory must return."""
    from trl_soup.sources import _REGISTRY

    register_prefix_source("returns_none", lambda trainer: None)
    try:
        args = soup_args(tmp_path, prefix_source_weights={"behavior": 1, "returns_none": 1}, max_steps=1)
        with pytest.raises(TypeError, match=r"prefix source 'returns_none' .* returned NoneType, not a backend"):
            make_trainer(args)
    finally:
        _REGISTRY.entries.pop("returns_none")


@pytest.mark.parametrize("path", ["/no/such/scorer", "./scorer", "outputs/run/checkpoint-5", "~/nothing-here"])
def test_missing_scorer_path_is_named_before_the_model_loads(tmp_path, path):
    """A prefix_scorer_model path with nothing there failed with transformers' "Repo id must be in the form ..."
    after the learner loaded (issue 24, item 5)."""
    with pytest.raises(ValueError, match=rf"prefix_scorer_model={path!r} is a path, and no directory is there"):
        soup_args(tmp_path, prefix_source="dataset", prefix_scorer_model=path)
    scorer = tmp_path / "scorer"
    scorer.mkdir()
    assert soup_args(tmp_path, prefix_source="dataset", prefix_scorer_model=str(scorer)).prefix_scorer_model
    assert soup_args(tmp_path, prefix_source="dataset", prefix_scorer_model="org/name").prefix_scorer_model
