"""recipes/real_model_study.py (issue 26): its pure parts without a model, and the smoke study on the real model
(2 settings x 1 seed x 2 steps, what CI runs): numbers consistent with an independent computation, a resumed study
that trains nothing again and reproduces every number, and a lost evaluation redone identically."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest

from trl_soup.evaluation import pass_at_k

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_study():
    spec = importlib.util.spec_from_file_location("real_model_study", REPO / "recipes" / "real_model_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = load_study()


def config(tmp_path, **changes):
    return dict(study.DEFAULTS, output_dir=str(tmp_path), **changes)


# ---------------------------------------------------------------------------------------------------------------------
# Without a model
# ---------------------------------------------------------------------------------------------------------------------


def flags(command: list[str]) -> dict[str, str]:
    return {command[i][2:]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}


def test_train_command_applies_the_study_then_the_setting_and_resumes(tmp_path):
    cfg = config(tmp_path, max_steps=24, learning_rate=2e-5, num_generations=8, prompts_per_step=2)
    base = flags(study.train_command(cfg, "dapo", 3))
    assert base["config"] == study.CONFIG_NAME and base["output_dir"] == study.run_dir(cfg, "dapo", 3)
    assert (base["seed"], base["data_seed"], base["max_steps"]) == ("3", "3", "24")
    assert base["per_device_train_batch_size"] == "16" and base["num_generations"] == "8"
    assert base["behavior_refresh_interval"] == "1" and float(base["learning_rate"]) == 2e-5
    assert base["log_position_statistics"] == "true" and "resume_from_checkpoint" not in base
    control = flags(study.train_command(cfg, "dapo_lr7e-6", 3))
    assert float(control["learning_rate"]) == 7e-6  # the setting's learning rate wins over the study's
    fixed = flags(study.train_command(cfg, "soup_fixed32_T8", 0))
    assert (fixed["prefix_strategy"], fixed["prefix_budget"], fixed["behavior_refresh_interval"]) == (
        "fixed_budget",
        "32",
        "8",
    )
    os.makedirs(os.path.join(study.run_dir(cfg, "dapo", 3), "checkpoint-4"))
    assert flags(study.train_command(cfg, "dapo", 3))["resume_from_checkpoint"] == "true"


def test_decoded_tokens_count_the_behavior_response_on_relay_steps():
    on_policy = {"completions/mean_length": 50.0, "soup/relay_batch": 0.0}
    assert study.decoded_tokens(on_policy, 8) == 400.0
    assert study.decoded_tokens({"completions/mean_length": 50.0}, 8) == 400.0  # a GRPO log: no soup/ keys
    # relay: the behavior copy decoded 60 tokens per row, 20 were kept, the learner wrote 50 - 20 = 30 more
    relay = {
        "completions/mean_length": 50.0,
        "soup/relay_batch": 1.0,
        "soup/behavior_length/mean": 60.0,
        "soup/prefix_length/mean": 20.0,
    }
    assert study.decoded_tokens(relay, 8) == 8 * (60 + 30)


def test_open_study_refuses_to_overwrite_or_to_change_what_its_numbers_depend_on(tmp_path):
    cfg = config(tmp_path / "s")
    study.open_study(cfg, resume=False)
    with pytest.raises(SystemExit, match="--resume"):
        study.open_study(cfg, resume=False)
    with pytest.raises(SystemExit, match=r"eval_samples=32 \(the study has 64\)"):
        study.open_study(dict(cfg, eval_samples=32), resume=True)
    study.open_study(dict(cfg, seeds=[0, 1, 2, 3]), resume=True)  # more seeds: allowed
    recorded = json.loads((tmp_path / "s" / "study_config.json").read_text())
    assert recorded["seeds"] == [0, 1, 2, 3]


def test_each_stage_is_charged_its_own_cpu_time_even_when_it_fails(tmp_path):
    """Two lanes at once: a sleeping stage is not charged the CPU of a busy one that ends meanwhile (RUSAGE_CHILDREN
    of the study process would charge it), and a failed stage's cost is recorded before the error propagates."""
    import sys
    import threading

    busy = [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(2.5)"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "sleep").mkdir()
    lane = threading.Thread(target=study.run_stage, args=(str(tmp_path / "busy"), "train", busy, None))
    lane.start()
    study.run_stage(str(tmp_path / "sleep"), "train", sleeper, None)
    lane.join()
    charged = {name: json.loads((tmp_path / name / "cost.json").read_text())["train"] for name in ("busy", "sleep")}
    assert charged["busy"]["cpu"] >= 0.5 and charged["sleep"]["cpu"] < 0.4
    assert charged["sleep"]["wall"] >= 2.5 and charged["sleep"]["invocations"] == 1
    failing = [
        sys.executable,
        "-c",
        "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nsys.exit(3)",
    ]
    with pytest.raises(study.StageFailed, match="exit code 3"):
        study.run_stage(str(tmp_path / "busy"), "train", failing, None)
    after = json.loads((tmp_path / "busy" / "cost.json").read_text())["train"]
    assert after["invocations"] == 2 and after["cpu"] >= charged["busy"]["cpu"] + 0.3


def test_unknown_setting_is_refused_with_the_allowed_values(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown \['soup_bogus'\]. Allowed values: \['dapo'"):
        study.study_config(study.parse(["--settings", "dapo", "soup_bogus", "--output_dir", str(tmp_path)]))


def synthetic_runs(settings, seeds, problems, n):
    """Runs with made-up correct counts (what the summary reads of a run)."""
    runs = []
    for s, name in enumerate(settings):
        for seed in seeds:
            correct = [(7 * s + 3 * seed + 5 * p) % (n + 1) for p in range(problems)]
            relay = [min(n, c + (p % 2)) for p, c in enumerate(correct)]
            cost = dict(train_seconds=100.0 + s, train_cpu_seconds=90.0, decoded_tokens=[1000.0, 2000.0])
            runs.append(dict(setting=name, seed=seed, correct=correct, relay_start_correct=relay, **cost))
    return runs


def test_summary_equals_an_independent_computation(tmp_path):
    settings, seeds, problems, n = ["dapo", "soup_r0.5_T8"], [0, 1], 5, 8
    cfg = config(tmp_path, settings=settings, seeds=seeds, eval_samples=n, num_resamples=300)
    runs = synthetic_runs(settings, seeds, problems, n)
    start = {"correct": [1, 0, 8, 3, 2]}
    summary = study.summarize(cfg, start, runs)
    assert summary["ks"] == [1, 2, 4, 8]
    per_run = lambda r, k, key="correct": sum(pass_at_k(n, c, k) for c in r[key]) / problems  # noqa: E731
    start_mean = lambda k: sum(pass_at_k(n, c, k) for c in start["correct"]) / problems  # noqa: E731
    soup = [r for r in runs if r["setting"] == "soup_r0.5_T8"]
    dapo = [r for r in runs if r["setting"] == "dapo"]
    for k in (1, 4):
        mean = sum(per_run(r, k) for r in soup) / len(soup)
        assert summary["pass_at_k"]["soup_r0.5_T8"][str(k)]["mean"] == pytest.approx(mean, abs=1e-12)
        assert summary["pass_at_k"]["start"][str(k)]["mean"] == pytest.approx(start_mean(k), abs=1e-12)
        assert summary["vs_start"]["soup_r0.5_T8"][str(k)]["mean"] == pytest.approx(mean - start_mean(k), abs=1e-12)
        vs_dapo = mean - sum(per_run(r, k) for r in dapo) / len(dapo)
        assert summary["vs_dapo"]["soup_r0.5_T8"][str(k)]["mean"] == pytest.approx(vs_dapo, abs=1e-12)
        relay = sum(per_run(r, k, "relay_start_correct") - per_run(r, k) for r in soup) / len(soup)
        assert summary["relay_minus_final"]["soup_r0.5_T8"][str(k)]["mean"] == pytest.approx(relay, abs=1e-12)
        interval = summary["vs_dapo"]["soup_r0.5_T8"][str(k)]
        assert interval["low"] <= interval["mean"] <= interval["high"]
    assert set(summary["vs_dapo"]) == {"soup_r0.5_T8"}  # neither dapo against itself nor the start model
    assert summary["cost"]["soup_r0.5_T8"] == {
        "train_seconds": 101.0,
        "train_cpu_seconds": 90.0,
        "decoded_tokens": 3000,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The smoke study on the real model (what CI runs)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from trl_soup.models import fetch_model

    try:
        fetch_model(study.MODEL)
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"{study.MODEL} is not available here: {error}")
    output = tmp_path_factory.mktemp("real_study")
    results = study.main(["--smoke", "--output_dir", str(output)])
    return output, results


def numbers_without_timings(results: dict) -> dict:
    from study_stats import numbers

    timing = ("step_time", "train_seconds", "train_cpu_seconds", "cost", "train_invocations", "seconds")
    return {path: value for path, value in numbers(results) if not any(f"/{key}" in path for key in timing)}


@pytest.mark.slow
def test_smoke_study_numbers_are_consistent(smoke):
    output, results = smoke
    cfg, summary, n = results["config"], results["summary"], study.SMOKE["eval_samples"]
    assert (output / "results.json").is_file() and (output / "real_pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
    runs = {r["setting"]: r for r in results["runs"]}
    assert set(runs) == set(study.SMOKE["settings"])
    for name, run in runs.items():
        assert len(run["reward"]) == cfg["max_steps"] and len(run["correct"]) == cfg["eval_problems"]
        assert all(0 <= c <= n for c in run["correct"] + run["relay_start_correct"])
        expected = sum(pass_at_k(n, c, 1) for c in run["correct"]) / len(run["correct"])
        assert summary["pass_at_k"][name]["1"]["mean"] == pytest.approx(expected, abs=1e-12)
        assert run["train_cpu_seconds"] > 0 and all(t > 0 for t in run["decoded_tokens"])
        assert all(length <= cfg["max_completion_length"] for length in run["lengths"])
        directory = output / "runs" / f"{name}_seed0"  # finished: the final model stays, the checkpoints go
        assert (directory / "model.safetensors").is_file() and not list(directory.glob("checkpoint-*"))
    # T = 1: every step on-policy; T = 8: the first batch refreshes (on-policy), the second is a relay batch
    assert runs["dapo"]["relay_batch"] == [0.0, 0.0] and runs["dapo"]["prefix_fraction"] == [0.0, 0.0]
    assert runs["soup_r0.5_T8"]["relay_batch"] == [0.0, 1.0] and runs["soup_r0.5_T8"]["prefix_fraction"][1] > 0
    start = json.loads((output / "start" / "eval.json").read_text())
    assert len(start["responses"]) == cfg["eval_problems"] * n
    assert "| soup_r0.5_T8 |" in study.markdown_tables(results)


@pytest.mark.slow
def test_resumed_smoke_study_trains_nothing_again_and_reproduces_every_number(smoke):
    output, first = smoke
    run = output / "runs" / "soup_r0.5_T8_seed0"
    invocations = json.loads((run / "cost.json").read_text())["train"]["invocations"]
    (run / "eval.json").unlink()  # a study killed after training, before this run's evaluation
    second = study.main(["--smoke", "--output_dir", str(output), "--resume"])
    assert json.loads((run / "cost.json").read_text())["train"]["invocations"] == invocations  # not trained again
    assert json.loads((run / "cost.json").read_text())["eval"]["invocations"] == 2  # evaluated again
    a, b = numbers_without_timings(first), numbers_without_timings(second)
    assert len(a) > 150 and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equal to NaN
