"""benchmarks/cost_curves.py: the plan, the aggregation, resuming, the plot and table, EOS suppression, and one tiny
real run (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from launch import REPO, run_python

SCRIPT = REPO / "benchmarks" / "cost_curves.py"


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cost_curves = _module("cost_curves", SCRIPT)
BACKENDS = [("local", 0), ("vllm_server", 0), ("vllm_server", 2)]


def test_plan_moves_one_variable_at_a_time_around_the_base():
    points = cost_curves.plan(cost_curves.SWEEPS, BACKENDS)
    sweeps, base = cost_curves.SWEEPS, cost_curves.BASE
    assert len(points) == sum(len(v) for v in sweeps.values()) * len(BACKENDS) == 19 * 3
    assert sweeps["max_completion_length"] == [16, 32, 64, 128, 256]
    assert sweeps["prefix_ratio"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert sweeps["refresh_interval"] == [1, 2, 4, 8, 16]
    assert cost_curves.parameters(sweeps["model_size"][0]) < 1e6
    assert 45e6 < cost_curves.parameters(sweeps["model_size"][-1]) < 55e6  # "0.5M to ~50M"
    for point in points:
        others = {k: v for k, v in point["config"].items() if k != point["variable"]}
        assert others == {k: v for k, v in base.items() if k != point["variable"]}
        assert point["config"][point["variable"]] == point["value"]
    for variable, values in sweeps.items():
        for combo in BACKENDS:
            line = [p["value"] for p in points if p["variable"] == variable and (p["backend"], p["prefetch"]) == combo]
            assert line == values
    # The base point is in all 4 sweeps: it runs once per backend/prefetch.
    runs = cost_curves.unique_runs(points)
    assert len(runs) == len({p["key"] for p in points}) == 57 - 3 * 3
    # local first; then the vllm_server runs of each model size together (one server each).
    backends = [p["backend"] for p in runs]
    assert backends == sorted(backends, key=lambda b: b != "local")
    sizes = [p["config"]["model_size"] for p in runs if p["backend"] == "vllm_server"]
    assert len([s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]) == len(sweeps["model_size"])


def test_parameters_match_the_benchmark_model():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import argparse

    import soup_vs_grpo

    from trl_soup import toy

    for size in ("128x2", "256x3"):
        hidden, layers = cost_curves.model_dims(size)
        sizes = soup_vs_grpo.cpu_model_sizes(argparse.Namespace(hidden_size=hidden, num_layers=layers))
        model = toy.build_tiny_model(toy.build_tokenizer(), **sizes)
        assert cost_curves.parameters(size) == sum(p.numel() for p in model.parameters())


def test_backends_and_values_are_parsed_and_checked():
    assert cost_curves.parse_backends("local, vllm_server:2") == [("local", 0), ("vllm_server", 2)]
    with pytest.raises(ValueError, match="prefetching needs vllm_server"):
        cost_curves.parse_backends("local:2")
    with pytest.raises(ValueError, match="unknown backend"):
        cost_curves.parse_backends("gpu")
    args = cost_curves.parse_args(["--only", "prefix_ratio,model_size", "--values", "model_size=128x2,1024x3"])
    assert cost_curves.build_sweeps(args) == {
        "prefix_ratio": [0.1, 0.3, 0.5, 0.7, 0.9],
        "model_size": ["128x2", "1024x3"],
    }
    args = cost_curves.parse_args(["--values", "refresh_interval=2,16"])
    assert cost_curves.build_sweeps(args)["refresh_interval"] == [2, 16]
    with pytest.raises(SystemExit):
        cost_curves.build_sweeps(cost_curves.parse_args(["--only", "batch"]))
    smoke = cost_curves.parse_args(["--smoke"])
    assert cost_curves.build_sweeps(smoke) == {"max_completion_length": [8, 12]}
    assert (smoke.backends, smoke.repeats, smoke.steps) == ("local", 1, 3)


def test_long_steps_get_fewer_steps_and_a_longer_estimate():
    args = cost_curves.parse_args([])
    small = {**cost_curves.BASE}
    large = {**cost_curves.BASE, "model_size": "1024x3"}
    assert cost_curves.steps_for(small, args) == args.steps == 24
    assert cost_curves.steps_for(large, args) == args.min_steps
    point = {"backend": "local", "prefetch": 0}
    assert cost_curves.estimate_seconds({**point, "config": large}, args) > cost_curves.estimate_seconds(
        {**point, "config": small}, args
    )


def fake_results(per_repeat, grpo_step=0.2, share=0.4):
    soup_step = grpo_step * sorted(per_repeat)[len(per_repeat) // 2]
    return {
        "summary": {
            "step_time_ratio": soup_step / grpo_step,
            "step_time_ratio_per_repeat": per_repeat,
            "grpo_generation_share": share,
            "peak_memory_ratio": 1.01,
            "critical_path_decode_ratio": 1.5,
            "total_decode_ratio": 1.5,
        },
        "medians": {
            "grpo": {"step_time": grpo_step, "behavior_wait": 0.0, "continuation": 0.08},
            "soup": {"step_time": soup_step, "behavior_wait": 0.05, "continuation": 0.04},
        },
        "mean_step_time": {"grpo": grpo_step, "soup": soup_step * 1.02},
    }


@pytest.mark.parametrize(
    "per_repeat, median, spread",
    [([1.3], 1.3, 0.0), ([1.4, 1.2], 1.3, 0.2), ([1.5, 1.1, 1.25], 1.25, 0.4), ([2.0, 1.0, 1.2, 1.6], 1.4, 1.0)],
)
def test_aggregation_of_per_repeat_ratios(per_repeat, median, spread):
    row = cost_curves.summarize_run(fake_results(per_repeat))
    assert row["step_time_ratio_median"] == pytest.approx(median)
    assert row["step_time_ratio_spread"] == pytest.approx(spread)
    assert (row["step_time_ratio_min"], row["step_time_ratio_max"]) == (min(per_repeat), max(per_repeat))
    assert row["step_time_ratio_per_repeat"] == per_repeat
    assert row["mean_step_time_ratio"] == pytest.approx(row["soup_step_time"] * 1.02 / row["grpo_step_time"])
    assert row["grpo_generation_share"] == 0.4 and row["peak_memory_ratio"] == 1.01


def fake_sweep(tmp_path, monkeypatch, calls, failing):
    def run_point(point, args, server_url):
        calls.append(point["key"])
        if point["key"] in failing:  # once: it succeeds when run again
            failing.discard(point["key"])
            return {"status": "failed", "error": "Traceback\nRuntimeError: boom", "wall_s": 1.0, "steps": 3}
        ratio = 1.0 + point["config"]["max_completion_length"] / 100 + point["config"]["prefix_ratio"] / 10
        return {
            "status": "ok",
            "wall_s": 2.0,
            "steps": 3,
            **cost_curves.summarize_run(fake_results([ratio, ratio + 0.1])),
        }

    monkeypatch.setattr(cost_curves, "run_point", run_point)
    output = tmp_path / "cc.json"
    argv = ["--backends", "local", "--output", str(output), "--values", "max_completion_length=16,64"]
    argv += ["--values", "prefix_ratio=0.1,0.5", "--only", "max_completion_length,prefix_ratio"]
    return output, argv


def test_sweep_writes_every_point_and_resumes(tmp_path, monkeypatch, capsys):
    calls = []
    output, argv = fake_sweep(tmp_path, monkeypatch, calls, failing={"local:0|len=16|size=128x2|ratio=0.5|T=8"})
    assert cost_curves.main(argv) == 1  # one run failed
    assert len(calls) == 3  # (16, 0.5), (64, 0.5) = base, (64, 0.1): the base point once
    data = json.loads(output.read_text())
    assert [(p["variable"], p["value"]) for p in data["points"]] == [
        ("max_completion_length", 16),
        ("max_completion_length", 64),
        ("prefix_ratio", 0.1),
        ("prefix_ratio", 0.5),
    ]
    base = [p for p in data["points"] if p["config"] == cost_curves.BASE]
    assert len(base) == 2 and base[0]["step_time_ratio_median"] == base[1]["step_time_ratio_median"]
    assert data["points"][0]["status"] == "failed" and "boom" in data["points"][0]["error"]
    assert data["meta"]["base"] == cost_curves.BASE and data["meta"]["repeats"] == 3
    assert (tmp_path / "cc.png").stat().st_size > 0
    calls.clear()
    assert cost_curves.main([*argv, "--resume"]) == 0  # only the failed run again
    assert calls == ["local:0|len=16|size=128x2|ratio=0.5|T=8"]
    resumed = json.loads(output.read_text())
    assert all(p["status"] == "ok" for p in resumed["points"])
    assert resumed["meta"]["started"] == data["meta"]["started"] and "--resume" not in resumed["meta"]["command"]
    assert [r["command"].endswith("--resume") for r in resumed["meta"]["resumed"]] == [True]
    # A resume with a narrower plan (one sweep, new values) runs only its new point and keeps the others in the JSON.
    calls.clear()
    narrower = ["--backends", "local", "--output", str(output), "--only", "prefix_ratio"]
    assert cost_curves.main([*narrower, "--values", "prefix_ratio=0.1,0.9", "--resume"]) == 0
    assert calls == ["local:0|len=64|size=128x2|ratio=0.9|T=8"]
    after = json.loads(output.read_text())["points"]
    assert sorted((p["variable"], p["value"]) for p in after) == [
        ("max_completion_length", 16),
        ("max_completion_length", 64),
        ("prefix_ratio", 0.1),
        ("prefix_ratio", 0.5),
        ("prefix_ratio", 0.9),
    ]
    assert all(p["status"] == "ok" for p in after)


def test_plot_and_table_from_a_given_json(tmp_path, monkeypatch, capsys):
    points = cost_curves.plan({"prefix_ratio": [0.1, 0.9], "model_size": ["128x2", "512x3"]}, BACKENDS)
    results = {}
    for i, run in enumerate(cost_curves.unique_runs(points)):
        results[run["key"]] = {"status": "ok", **cost_curves.summarize_run(fake_results([1.1 + i / 50, 1.3]))}
    data = cost_curves.assemble(points, results, {"base": cost_curves.BASE})
    # Two sweeps run separately (local, vllm_server), plotted together.
    sources = [tmp_path / "local.json", tmp_path / "server.json"]
    for source, local in zip(sources, (True, False), strict=True):
        kept = [p for p in data["points"] if (p["backend"] == "local") == local]
        source.write_text(json.dumps({"meta": {**data["meta"], "started": source.stem}, "points": kept}))
    png = tmp_path / "figures" / "curves.png"
    assert cost_curves.main(["--replot", *map(str, sources), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| prefix_ratio") or line.startswith("| model_")]
    assert len(rows) == len(points) == 12
    assert "| model_size | 512x3 (12.6M) | vllm_server, prefetch 2 |" in printed
    assert "**1.20** | 1.10 1.30 | 0.20 |" in printed  # the first run: median and spread of [1.1, 1.3]


def test_plan_flag_runs_nothing(tmp_path):
    result = run_python(
        [SCRIPT, "--plan", "--only", "prefix_ratio", "--backends", "local", "--output", tmp_path / "cc.json"],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "5 points, 5 runs" in result.stdout and "estimated run time" in result.stdout
    assert not (tmp_path / "cc.json").exists()


def test_never_stop_makes_eos_unreachable():
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import soup_vs_grpo

    from trl_soup import toy

    model, tokenizer = toy.build_toy_policy(seed=0, warmup=False)
    soup_vs_grpo.never_stop(model, tokenizer.eos_token_id)
    prompts = tokenizer(["copy:12345678="] * 16, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(**prompts).logits
        out = model.generate(
            **prompts, max_new_tokens=48, do_sample=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=0
        )
    assert logits[..., tokenizer.eos_token_id].max() < -50 < logits.amax(dim=-1).min()
    assert out.shape == (16, 14 + 48) and not (out[:, 14:] == tokenizer.eos_token_id).any()


def test_smoke_point_end_to_end(tmp_path):
    """One tiny real point: no EOS, so SOUP decodes the whole 8-token behavior response plus the 4-token continuation
    of each row where GRPO decodes 8 tokens (total decode ratio exactly 1.5)."""
    output = tmp_path / "cc.json"
    result = run_python([SCRIPT, "--smoke", "--values", "max_completion_length=8", "--output", output], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (point,) = json.loads(output.read_text())["points"]
    assert point["status"] == "ok" and point["steps"] == 3
    assert point["step_time_ratio_per_repeat"] == [pytest.approx(point["step_time_ratio_pooled"])]
    assert point["step_time_ratio_spread"] == 0.0
    assert point["total_decode_ratio"] == pytest.approx(1.5)
    assert 0 < point["grpo_generation_share"] < 1
    assert (tmp_path / "cc.png").exists()


def test_shared_server_command_has_the_sweep_model_and_cores(tmp_path):
    """The vllm_server sweep's shared server: soup_vs_grpo's server command for the point's model size, pinned to
    --server_cpus, full-weight refresh (no LoRA flags). Built from soup_vs_grpo's parser, so an option that
    `server_command` reads cannot be missing (the pool's --lora_rank once was: AttributeError at the first server)."""
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import soup_vs_grpo

    sweep = argparse.Namespace(work_dir=str(tmp_path), server_cpus="0")
    args = cost_curves.shared_server_args(soup_vs_grpo, "256x3", sweep)
    assert (args.hidden_size, args.num_layers, args.random_init, args.no_eos) == (256, 3, True, True)
    assert args.output_dir == str(tmp_path / "server-256x3")
    command, env, url = soup_vs_grpo.server_command(args, "MODEL")
    assert command[:3] == ["taskset", "-c", "0"] and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert command[command.index("--model") + 1] == "MODEL" and "--enable-lora" not in command
    assert url == f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    lora = soup_vs_grpo.make_parser().parse_args(["--lora_rank", "4", "--pool_size", "3"])
    command, _, _ = soup_vs_grpo.server_command(lora, "MODEL")
    assert command[command.index("--max-lora-rank") + 1] == "8" and command[command.index("--max-loras") + 1] == "3"
