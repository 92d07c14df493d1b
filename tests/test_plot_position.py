"""recipes/plot_position_statistics.py: averages the logged per-position bins and writes a PNG."""

from __future__ import annotations

import importlib.util
import json
import math

from launch import REPO, run_python


def _load():
    spec = importlib.util.spec_from_file_location(
        "plot_position_statistics", REPO / "recipes" / "plot_position_statistics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _history():
    history = []
    for step in (1, 2, 3):
        entry = {"step": step, "reward": 0.5}
        for i in range(10):
            entry[f"soup/position/entropy/bin_{i}"] = step * 1.0 + i  # mean over steps 1..3: 2 + i
            entry[f"soup/position/clip_ratio/bin_{i}"] = float("nan") if (step == 2 and i == 9) else 0.1 * step
        history.append(entry)
    history.append({"step": 3, "train_runtime": 1.0})  # the summary entry has no bins
    return history


def test_position_curves_average_over_steps_and_skip_nan():
    curves = _load().position_curves(_history())
    assert curves["entropy"] == [2.0 + i for i in range(10)]
    assert math.isclose(curves["clip_ratio"][0], 0.2)
    assert math.isclose(curves["clip_ratio"][9], 0.2)  # NaN at step 2 left out: (0.1 + 0.3) / 2
    late = _load().position_curves(_history(), first_step=3)
    assert late["entropy"] == [3.0 + i for i in range(10)]


def test_plot_writes_png(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": _history()}))
    out = tmp_path / "fig5.png"
    result = run_python(
        [REPO / "recipes" / "plot_position_statistics.py", state, "--labels", "SOUP", "--output", out], timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
