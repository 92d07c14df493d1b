"""scripts/gpu_check.sh without a GPU (its dry run) and the pins of scripts/gpu_wheels.sh; nothing is downloaded.

The check itself needs a CUDA host (docs/performance.md, "GPU check"); here it must stop at once with a clear message,
a non-zero exit and a JSON that says why.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from launch import REPO, repo_environment
from packaging.requirements import Requirement

SCRIPTS = REPO / "scripts"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPTS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_without_cuda_stops_with_a_clear_message(tmp_path):
    out = tmp_path / "out"
    env = repo_environment(OUT=str(out), GPU_CHECK_PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "needs a CUDA GPU" in output
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["status"] == "error"
    assert data["error"].startswith("needs a CUDA GPU")
    assert data["preflight"]["cuda_available"] is False
    assert data["preflight"]["torch"]
    assert data["parts"] == {}  # nothing was installed or run
    assert data["settings"]["wheels"] == load_gpu_check().pinned_wheels()
    assert data["elapsed_s"] < 60
    assert "needs a CUDA GPU" in (out / "gpu_check.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]


def test_wheel_list_is_pinned_and_within_the_project_pins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    wheels = load_gpu_check().pinned_wheels()
    pins = {}
    for spec in wheels:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==\d+(\.\d+)*", spec), f"not an exact pin: {spec!r}"
        name, version = spec.split("==")
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert key not in pins, f"{name} is listed twice (two versions stop the whole install)"
        pins[key] = version
    # What the host lacks or has too old; what it has (torch+CUDA, accelerate 1.15.0, tokenizers...) is not carried.
    assert {"trl", "datasets", "transformers", "dill", "multiprocess"} <= pins.keys()
    assert not {"torch", "accelerate", "tokenizers", "safetensors", "pyarrow", "numpy"} & pins.keys()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["peft"]]
    for requirement in requirements:
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), (
                f"{requirement.name}=={pins[requirement.name]}"
            )


def test_wheel_lookup_and_json_helpers(tmp_path):
    gpu_check = load_gpu_check()
    for name in ("trl-1.16.0-py3-none-any.whl", "multiprocess-0.70.19-py312-none-any.whl", "notes.txt"):
        (tmp_path / name).write_text("")
    found, missing = gpu_check.wheel_files(str(tmp_path), ["trl==1.16.0", "multiprocess==0.70.19", "dill==0.4.1"])
    assert [p.rsplit("/", 1)[-1] for p in found] == [
        "trl-1.16.0-py3-none-any.whl",
        "multiprocess-0.70.19-py312-none-any.whl",
    ]
    assert missing == ["dill==0.4.1"]
    here = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert gpu_check.wheel_runs_here("a-1-py3-none-any.whl")
    assert gpu_check.wheel_runs_here(f"a-1-{here}-none-any.whl")
    assert not gpu_check.wheel_runs_here("a-1-py29-none-any.whl")
    assert gpu_check.json_safe({"a": [float("nan"), 1.0], "b": float("inf")}) == {"a": [None, 1.0], "b": None}


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_shell_scripts_are_strict(script):
    text = (SCRIPTS / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
