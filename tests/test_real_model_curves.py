"""benchmarks/real_model_curves.py without training: which runs count as finished, the resume command line, the
moving average, the table and the plot from trainer_state.json files."""

from __future__ import annotations

import importlib.util
import json

import pytest
from launch import REPO

SCRIPT = REPO / "benchmarks" / "real_model_curves.py"


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("real_model_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(run_dir, rewards, step_times, global_step=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    history = [
        {"step": i + 1, "reward": r, "step_time": t, "completions/mean_length": 60.0 - i, "loss": 0.0}
        for i, (r, t) in enumerate(zip(rewards, step_times, strict=True))
    ]
    history.append({"step": len(rewards), "train_runtime": 1.0})  # the summary entry has no reward
    state = {"global_step": len(rewards) if global_step is None else global_step, "log_history": history}
    (run_dir / "trainer_state.json").write_text(json.dumps(state))


def test_finished_needs_the_final_state_at_max_steps(tmp_path, curves):
    assert not curves.finished(str(tmp_path / "missing"), 40)
    _write_run(tmp_path / "partial", [0.1] * 3, [1.0] * 3)
    assert not curves.finished(str(tmp_path / "partial"), 40)
    assert curves.finished(str(tmp_path / "partial"), 3)


def test_train_resumes_only_with_a_checkpoint(tmp_path, curves, monkeypatch):
    commands = []
    monkeypatch.setattr(curves.subprocess, "run", lambda command, **kwargs: commands.append(command))
    run_dir = tmp_path / "run"
    curves.train("smollm2-135m_arith_soup", str(run_dir), 40, 5, ["--seed", "7"])
    (run_dir / "checkpoint-5").mkdir()
    curves.train("smollm2-135m_arith_soup", str(run_dir), 40, 5, [])
    first, second = commands
    assert first[first.index("--config") + 1] == "smollm2-135m_arith_soup"
    assert first[first.index("--max_steps") + 1] == "40" and first[first.index("--save_steps") + 1] == "5"
    assert first[-2:] == ["--seed", "7"] and "--resume_from_checkpoint" not in first
    assert second[-2:] == ["--resume_from_checkpoint", "true"]


def test_moving_average(curves):
    assert curves.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert curves.moving_average([2.0], 5) == [2.0]


def test_replot_tabulates_and_plots_finished_runs(tmp_path, curves, capsys):
    rewards = [0.0] * 10 + [0.5] * 10
    _write_run(tmp_path / "a", rewards, [10.0] * 19 + [30.0])
    _write_run(tmp_path / "b", [0.25] * 20, [2.0] * 20)
    plot = tmp_path / "curves.png"
    assert curves.main(["--replot", "--root", str(tmp_path), "--configs", "a,b", "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| a | 20 | 0.000 | 0.500 | 10.0 | 10.0-30.0 | 220 |" in table
    assert "| b | 20 | 0.250 | 0.250 | 2.0 | 2.0-2.0 | 40 |" in table
    assert plot.stat().st_size > 10_000
