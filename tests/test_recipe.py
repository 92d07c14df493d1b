"""The embedded default recipe runs as a user runs it and prints per-step SOUP metrics and a summary."""

from __future__ import annotations

from launch import REPO, run_python


def test_soup_toy_recipe_runs(tmp_path):
    result = run_python(
        [
            REPO / "recipes" / "soup_toy.py",
            "--max_steps",
            "4",
            "--behavior_refresh_interval",
            "2",
            "--output_dir",
            tmp_path / "out",
            "--num_prompts",
            "32",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[SOUP]") and line.split()[1].isdigit()]
    assert [int(line.split()[1]) for line in lines] == [1, 2, 3, 4]
    relay_column = [float(line.split()[3]) for line in lines]
    assert relay_column == [0.0, 1.0, 0.0, 1.0]  # T = 2: refresh, relay, refresh, relay
    assert "Summary" in result.stdout and "2 relay batches" in result.stdout
