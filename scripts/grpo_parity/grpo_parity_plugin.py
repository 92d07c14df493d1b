"""pytest plugin for the GRPO parity run (loaded with `-p grpo_parity_plugin`; `run_parity.py` sets it up).

Environment variables (set by `run_parity.py`):

- `GRPO_PARITY_MODE`: `grpo` (TRL's GRPOTrainer / GRPOConfig, unchanged), `soup_t1` or `soup_t2`
  (SOUPTrainer / SOUPConfig with `behavior_refresh_interval` defaulting to 1 or 2).
- `GRPO_PARITY_DATASETS`: root of the local data set stand-ins (see `build_standins.py`).
- `GRPO_PARITY_EVENTS`: a JSON-lines file; one line per test outcome is appended as soon as it is known, so partial
  results can be compared while a run is still going.

What it does:

1. Redirects `load_dataset("trl-internal-testing/<name>", config, split=..., streaming=...)` to the local parquet
   stand-ins (patched in `datasets` and in the test module's namespace). Models need no patch: they resolve from the
   local Hub cache (`HF_HUB_CACHE` + `HF_HUB_OFFLINE=1`).
2. In the SOUP modes, replaces the names `GRPOTrainer` and `GRPOConfig` in the test module by `SOUPTrainer` and a
   `SOUPConfig` subclass whose defaults equal GRPOConfig's for every GRPOConfig field SOUPConfig redefines (so a
   test that relies on a GRPO default gets it), except `behavior_refresh_interval` (1 or 2).
3. Skips the tests whose stand-ins cannot be built locally (vision-language models and image data sets), with a
   reason that says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

MODE = os.environ.get("GRPO_PARITY_MODE", "grpo")
DATASET_ROOT = Path(os.environ.get("GRPO_PARITY_DATASETS", "."))
EVENTS = os.environ.get("GRPO_PARITY_EVENTS")
LOCAL_DATASETS = {"trl-internal-testing/zen"}

# Tests whose stand-ins are not built: (node id prefix, reason).
NOT_BUILT = [
    (
        "tests/test_grpo_trainer.py::TestGRPOTrainerVLM::",
        "stand-in not built: vision-language models (Qwen2-VL, Qwen2.5-VL, Qwen3.5, Gemma3/4, LLaVA(-Next), SmolVLM) "
        "and the zen-image / zen-multi-image data sets",
    ),
]


# ---------------------------------------------------------------------------------------------------------------------
# Trainer / config substitution
# ---------------------------------------------------------------------------------------------------------------------


def restored_grpo_defaults():
    """GRPOConfig fields whose default SOUPConfig changes: {name: (grpo_default, soup_default)}."""
    from trl import GRPOConfig

    from trl_soup import SOUPConfig

    grpo = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    changed = {}
    for f in dataclasses.fields(SOUPConfig):
        g = grpo.get(f.name)
        if g is None:
            continue
        g_default = g.default if g.default is not dataclasses.MISSING else g.default_factory
        s_default = f.default if f.default is not dataclasses.MISSING else f.default_factory
        if g_default != s_default:
            changed[f.name] = (g.default, f.default, g.default_factory, f.default_factory)
    return changed


_CLASSES = {}


def soup_classes(interval: int):
    """(SOUPTrainerT<interval>, SOUPConfigT<interval>, restored defaults); module attributes, so they pickle."""
    if interval in _CLASSES:
        return _CLASSES[interval]
    from trl_soup import SOUPConfig, SOUPTrainer

    restored = restored_grpo_defaults()
    new_fields = [("behavior_refresh_interval", int, dataclasses.field(default=interval))]
    for name, (g_default, _, g_factory, _) in restored.items():
        if g_factory is not dataclasses.MISSING:
            new_fields.append((name, object, dataclasses.field(default_factory=g_factory)))
        else:
            new_fields.append((name, object, dataclasses.field(default=g_default)))
    config_cls = dataclasses.make_dataclass(f"SOUPConfigT{interval}", new_fields, bases=(SOUPConfig,))
    config_cls.__module__ = __name__
    config_cls.__qualname__ = config_cls.__name__
    trainer_cls = type(f"SOUPTrainerT{interval}", (SOUPTrainer,), {"__module__": __name__})
    globals()[config_cls.__name__] = config_cls
    globals()[trainer_cls.__name__] = trainer_cls
    _CLASSES[interval] = (trainer_cls, config_cls, {k: v[0] for k, v in restored.items()})
    return _CLASSES[interval]


_PATCHED = {}


def _patch_module(module):
    if id(module) in _PATCHED or module is None:
        return
    _PATCHED[id(module)] = module
    if hasattr(module, "load_dataset"):
        module.load_dataset = local_load_dataset
    if MODE == "grpo":
        return
    interval = {"soup_t1": 1, "soup_t2": 2}[MODE]
    trainer_cls, config_cls, _ = soup_classes(interval)
    if hasattr(module, "GRPOTrainer"):
        module.GRPOTrainer = trainer_cls
    if hasattr(module, "GRPOConfig"):
        module.GRPOConfig = config_cls


# ---------------------------------------------------------------------------------------------------------------------
# Compatibility shim: TRL's tests at the mirror commit import a few `trl.import_utils.is_*_available` helpers that the
# installed TRL does not have (e.g. `is_joblib_available`). They are added, as plain package-availability checks,
# before the test helpers are imported. Listed in the pytest header.
# ---------------------------------------------------------------------------------------------------------------------

import importlib  # noqa: E402
import importlib.util  # noqa: E402

_trl_import_utils = importlib.import_module("trl.import_utils")

SHIMMED = []
for _name, _package in (
    ("is_joblib_available", "joblib"),
    ("is_harbor_available", "harbor"),
    ("is_openreward_available", "openreward"),
    ("is_mergekit_available", "mergekit"),
    ("is_math_verify_available", "math_verify"),
    ("is_jmespath_available", "jmespath"),
    ("is_pydantic_available", "pydantic"),
    ("is_uvicorn_available", "uvicorn"),
    ("is_fastapi_available", "fastapi"),
):
    if not hasattr(_trl_import_utils, _name):
        setattr(_trl_import_utils, _name, lambda _p=_package: importlib.util.find_spec(_p) is not None)
        SHIMMED.append(_name)


# ---------------------------------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------------------------------

import datasets  # noqa: E402

_original_load_dataset = datasets.load_dataset


def local_load_dataset(path, name=None, *args, split=None, streaming=False, **kwargs):
    if path in LOCAL_DATASETS:
        if name is None:
            raise ValueError(f"{path}: a config name is required by the local stand-in")
        config_dir = DATASET_ROOT / path / name
        if not config_dir.is_dir():
            raise FileNotFoundError(f"local stand-in of {path} has no config {name!r} ({config_dir})")
        data_files = {p.stem: str(p) for p in sorted(config_dir.glob("*.parquet"))}
        return _original_load_dataset("parquet", data_files=data_files, split=split, streaming=streaming, **kwargs)
    if isinstance(path, str) and path.startswith("trl-internal-testing/"):
        raise FileNotFoundError(f"no local stand-in for the data set {path!r} (not built)")
    return _original_load_dataset(path, name, *args, split=split, streaming=streaming, **kwargs)


datasets.load_dataset = local_load_dataset


# ---------------------------------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------------------------------


def pytest_report_header(config):
    lines = [f"grpo-parity mode: {MODE}; trl.import_utils helpers added for the tests: {SHIMMED}"]
    if MODE != "grpo":
        _, config_cls, restored = soup_classes(1 if MODE == "soup_t1" else 2)
        lines.append(
            f"grpo-parity: GRPOTrainer -> SOUPTrainer, GRPOConfig -> {config_cls.__name__}; "
            f"GRPOConfig defaults restored: {restored}"
        )
    return lines


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _patch_module(getattr(item, "module", None))
        for prefix, reason in NOT_BUILT:
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.skip(reason=reason))


_start = {}


def pytest_runtest_logstart(nodeid, location):
    _start[nodeid] = time.time()


def _summary(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.strip().splitlines()[0] if crash.message.strip() else ""
    if isinstance(report.longrepr, tuple):  # skip: (path, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""


def _record(nodeid, outcome, message, duration):
    if not EVENTS:
        return
    with open(EVENTS, "a") as f:
        f.write(
            json.dumps(
                {"mode": MODE, "test": nodeid, "outcome": outcome, "message": message, "duration": round(duration, 2)}
            )
            + "\n"
        )


_seen = {}


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "setup":
        if report.skipped:
            outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            _record(nodeid, outcome, _summary(report), 0.0)
            _seen[nodeid] = outcome
        elif report.failed:
            _record(nodeid, "error", _summary(report), time.time() - _start.get(nodeid, time.time()))
            _seen[nodeid] = "error"
    elif report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
            message = report.wasxfail
        elif report.passed:
            outcome, message = "passed", ""
        elif report.skipped:
            outcome, message = "skipped", _summary(report)
        else:
            outcome, message = "failed", _summary(report)
        _record(nodeid, outcome, message, time.time() - _start.get(nodeid, time.time()))
        _seen[nodeid] = outcome
    elif report.when == "teardown" and report.failed and _seen.get(nodeid) == "passed":
        _record(nodeid, "error", "teardown: " + _summary(report), time.time() - _start.get(nodeid, time.time()))
