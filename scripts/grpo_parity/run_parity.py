"""GRPO parity: TRL's own `tests/test_grpo_trainer.py` run against GRPOTrainer, SOUPTrainer T=1 and SOUPTrainer T=2.

Usage (from the repository root, in the project's virtualenv):

    python scripts/grpo_parity/run_parity.py /work/.mirror/huggingface+trl/repo            # bare mirror, HEAD
    python scripts/grpo_parity/run_parity.py /path/to/trl-checkout                           # a TRL checkout
    python scripts/grpo_parity/run_parity.py MIRROR --commit <sha> --modes grpo soup_t1     # a commit, some modes
    python scripts/grpo_parity/run_parity.py MIRROR --report-only --workdir DIR             # re-write the report

Steps:

1. Extracts TRL's test module and its helpers (`tests/__init__.py`, `tests/conftest.py`, `tests/testing_utils.py`,
   `tests/testing_constants.py`, `tests/data/`, `pyproject.toml` for the pytest settings) into a work directory
   OUTSIDE this repository (default: a fresh `/tmp/grpo_parity_*`). TRL's test code is never copied into the project.
2. Builds local stand-ins of the tiny Hub models and data sets (`build_standins.py`; cached under `--cache`).
3. Runs the suite once per mode, one after another, with `grpo_parity_plugin.py` (`-p grpo_parity_plugin`):
   `grpo` (unchanged), `soup_t1` and `soup_t2` (GRPOTrainer/GRPOConfig replaced by SOUPTrainer and a SOUPConfig
   subclass with behavior_refresh_interval 1 or 2 and GRPOConfig's defaults restored). Each mode writes a JUnit XML
   file and a JSON-lines event file (one line per test as soon as it finishes).
4. Writes the comparison: `docs/grpo_parity.md` (full table) and `scripts/grpo_parity/FAILURES.md` (tests that pass
   on GRPO and fail on SOUP), also while the runs are going (after each mode, and every `--report-every` seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from build_standins import TrlSource, build_all  # noqa: E402

MODES = ("grpo", "soup_t1", "soup_t2")
MODE_TITLES = {"grpo": "GRPO", "soup_t1": "SOUP T=1", "soup_t2": "SOUP T=2"}
TEST_FILES = [
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/test_grpo_trainer.py",
    "tests/testing_utils.py",
    "tests/testing_constants.py",
    "pyproject.toml",
]
TEST_DIRS = ["tests/data"]


def extract(source: TrlSource, workdir: Path) -> None:
    for rel in TEST_FILES:
        if source.exists(rel):
            out = workdir / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(source.read(rel))
    for rel in TEST_DIRS:
        if source.bare:
            if source.exists(rel):
                archive = subprocess.run(
                    ["git", "--git-dir", str(source.path), "archive", source.commit, rel],
                    check=True,
                    capture_output=True,
                ).stdout
                subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
        elif (source.path / rel).is_dir():
            subprocess.run(["cp", "-r", str(source.path / rel), str(workdir / rel)], check=True)
    # Tell readers where this came from.
    (workdir / "TRL_COMMIT").write_text(source.commit + "\n")


def mode_env(paths: dict, workdir: Path, mode: str) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_CACHE=str(paths["hub_cache"]),
        HF_DATASETS_CACHE=str(workdir / "datasets_cache"),
        HF_MODULES_CACHE=str(workdir / "modules_cache"),
        GRPO_PARITY_MODE=mode,
        GRPO_PARITY_DATASETS=str(paths["dataset_root"]),
        GRPO_PARITY_EVENTS=str(workdir / f"events_{mode}.jsonl"),
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    env.pop("WANDB_MODE", None)
    return env


# pytest with the parity plugin, quiet, no cache: the start of every command this script runs.
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "grpo_parity_plugin", "-q"]


def pytest_command(
    workdir: Path, mode: str, extra: list[str], tests: list[str] | None = None, tag: str = ""
) -> list[str]:
    cmd = [
        *PYTEST,
        "-rA",
        f"--junitxml={workdir / f'junit_{mode}{tag}.xml'}",
    ] + (tests or ["tests/test_grpo_trainer.py"])
    try:
        import xdist  # noqa: F401

        cmd[3:3] = ["-n", "2"]
    except ImportError:
        pass
    return cmd + extra


def run_mode(
    paths, workdir: Path, mode: str, extra: list[str], tests: list[str] | None = None, tag: str = ""
) -> float:
    """One pytest run of `mode` (on `tests`, node ids, or the whole module); appends to events_<mode>.jsonl."""
    log = workdir / f"pytest_{mode}{tag}.log"
    cmd = pytest_command(workdir, mode, extra, tests, tag)
    print(f"[parity] {mode}{tag}: {shlex.join(cmd[:12])}{' ...' if len(cmd) > 12 else ''} (log: {log})", flush=True)
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=workdir, env=mode_env(paths, workdir, mode), stdout=f, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    time_file = workdir / f"time_{mode}.txt"
    previous = float(time_file.read_text().split()[0]) if time_file.exists() else 0.0
    time_file.write_text(f"{previous + elapsed:.0f} {rc.returncode}\n")
    print(f"[parity] {mode}{tag}: exit {rc.returncode} after {elapsed / 60:.1f} min", flush=True)
    return elapsed


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def read_events(workdir: Path, mode: str) -> dict[str, dict]:
    path = workdir / f"events_{mode}.jsonl"
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                results[e["test"]] = e  # a teardown error overrides a pass
    return results


def read_junit(workdir: Path, mode: str) -> dict[str, dict] | None:
    """Outcomes from the JUnit XML (also records collection errors, which the event file cannot)."""
    import xml.etree.ElementTree as ET

    paths = sorted(workdir.glob(f"junit_{mode}*.xml"))
    if not paths:
        return None
    results = {}
    cases = []
    for path in paths:
        try:
            cases += list(ET.parse(path).getroot().iter("testcase"))
        except ET.ParseError:  # being written
            pass
    for case in cases:
        classname, name = case.get("classname", ""), case.get("name", "")
        nodeid = classname.replace(".", "/") + ".py::" + name if "::" not in classname else classname + "::" + name
        # classname is "tests.test_grpo_trainer.TestX": rebuild "tests/test_grpo_trainer.py::TestX::name"
        parts = classname.split(".")
        for i in range(len(parts), 0, -1):
            if parts[i - 1].startswith("test_"):
                nodeid = "/".join(parts[:i]) + ".py" + "".join("::" + p for p in parts[i:]) + "::" + name
                break
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or "").strip().splitlines()[0] if child.get("message") else ""
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                message = child.get("message") or ""
        results[nodeid] = {"outcome": outcome, "message": message, "duration": float(case.get("time", 0))}
    return results


def mode_results(workdir: Path, mode: str) -> dict[str, dict]:
    events = read_events(workdir, mode)
    junit = read_junit(workdir, mode)
    if junit:
        for nodeid, r in junit.items():
            if nodeid not in events or (r["outcome"] in ("failed", "error") and events[nodeid]["outcome"] == "passed"):
                events[nodeid] = r
    return events


def counts(results: dict[str, dict]) -> dict[str, int]:
    c: dict[str, int] = {}
    for r in results.values():
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return c


def fmt_counts(c: dict[str, int]) -> str:
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    return ", ".join(f"{c[k]} {k}" for k in order if c.get(k)) or "not run yet"


def short(outcome: str | None) -> str:
    return {
        "passed": "pass",
        "failed": "FAIL",
        "error": "ERROR",
        "skipped": "skip",
        "xfailed": "xfail",
        "xpassed": "XPASS",
        None: "-",
    }[outcome]


def md_escape(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def is_bad(outcome):
    return outcome in ("failed", "error", "xpassed")


def write_reports(workdir: Path, commit: str, command: str, notes: list[str], running: str | None = None) -> None:
    """`running`: None when every run is complete, else a status line (the reports then say they are partial)."""
    results = {m: mode_results(workdir, m) for m in MODES}
    times = {}
    for m in MODES:
        t = workdir / f"time_{m}.txt"
        if t.exists():
            times[m] = float(t.read_text().split()[0])
    collected = _collection_order(workdir)
    tests = sorted(set(collected).union(*[set(r) for r in results.values()]))
    order = {t: i for i, t in enumerate(collected)}
    tests.sort(key=lambda t: order.get(t, len(order)))

    header = [
        "# GRPO parity: TRL's GRPOTrainer tests against SOUPTrainer",
        "",
        f"TRL test suite: `tests/test_grpo_trainer.py` of huggingface/trl at commit `{commit}` "
        '(the newest commit of the mirror; see "Versions" below). Generated by `scripts/grpo_parity/run_parity.py`.',
        "",
        "Reproduce (from the repository root, in `.venv`; about 1.5-2 hours per mode on a shared 2-core CPU; "
        "`-- -k EXPR` selects tests):",
        "",
        "```bash",
        command,
        "```",
        "",
        "| run | outcome counts | time |",
        "|---|---|---|",
    ]
    for m in MODES:
        status = fmt_counts(counts(results[m]))
        header.append(
            f"| {MODE_TITLES[m]} | {status} | {times[m] / 60:.1f} min |"
            if m in times
            else f"| {MODE_TITLES[m]} | {status} | - |"
        )
    header.append("")
    if running:
        header += [f"**Partial results** ({running}); the counts cover the tests run so far.", ""]
    header += notes

    regressions = [
        t
        for t in tests
        if results["grpo"].get(t, {}).get("outcome") == "passed"
        and any(is_bad(results[m].get(t, {}).get("outcome")) for m in ("soup_t1", "soup_t2"))
    ]
    also_bad = [t for t in tests if is_bad(results["grpo"].get(t, {}).get("outcome"))]

    reasons_path = HERE / "reasons.json"  # the reason of each SOUP failure, once analysed (test id -> text)
    reasons = json.loads(reasons_path.read_text()) if reasons_path.exists() else {}

    def row(t):
        outs = [results[m].get(t, {}).get("outcome") for m in MODES]
        why = ""
        if is_bad(outs[0]):
            why = "fails on GRPO too: " + md_escape(results["grpo"][t]["message"])
        elif outs[0] == "passed":
            msgs = {
                m: md_escape(results[m][t]["message"])
                for m in ("soup_t1", "soup_t2")
                if is_bad(results[m].get(t, {}).get("outcome"))
            }
            if "soup_t1" in msgs:
                why = msgs["soup_t1"]
                if "soup_t2" in msgs and msgs["soup_t2"] != why:
                    why += f"; T=2: {msgs['soup_t2']}"
            elif "soup_t2" in msgs:
                why = f"T=2: {msgs['soup_t2']}"
        name = t.split("::", 1)[1] if "::" in t else t
        if why and not is_bad(outs[0]) and name in reasons:
            why = f"**{md_escape(reasons[name])}** (error: {why})"
        return f"| `{name}` | {short(outs[0])} | {short(outs[1])} | {short(outs[2])} | {why} |"

    table = ["## All tests", "", "| test | GRPO | SOUP T=1 | SOUP T=2 | why |", "|---|---|---|---|---|"]
    table += [row(t) for t in tests]

    reg = ["## Pass on GRPO, fail on SOUP", ""]
    if regressions:
        reg += ["| test | GRPO | SOUP T=1 | SOUP T=2 | why |", "|---|---|---|---|---|"] + [row(t) for t in regressions]
    else:
        reg.append("None so far." if running else "None.")
    reg.append("")
    if also_bad:
        reg += ["## Fail on GRPO too (not SOUP regressions: test/TRL version mismatch, stand-ins or environment)", ""]
        reg += [f"- `{t.split('::', 1)[1]}`: {md_escape(results['grpo'][t]['message'])}" for t in also_bad]
        reg.append("")

    doc = header + [""] + reg + table + [""]
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "grpo_parity.md").write_text("\n".join(doc))

    failures = (
        [
            "# GRPO parity: tests that pass on GRPOTrainer and fail on SOUPTrainer",
            "",
            f"TRL commit `{commit}`. {'Partial results (' + running + '). ' if running else ''}"
            "Full table: `docs/grpo_parity.md`.",
            "",
            "| run | outcome counts | time |",
            "|---|---|---|",
        ]
        + header[header.index("|---|---|---|") + 1 : header.index("|---|---|---|") + 1 + len(MODES)]
        + [""]
    )
    failures += reg
    for t in regressions:
        for m in ("soup_t1", "soup_t2"):
            r = results[m].get(t)
            if r and is_bad(r["outcome"]):
                failures.append(f"- `{t.split('::', 1)[1]}` [{MODE_TITLES[m]}]: {' '.join(r['message'].split())}")
    (HERE / "FAILURES.md").write_text("\n".join(failures) + "\n")


def _collection_order(workdir: Path) -> list[str]:
    path = workdir / "collection.txt"
    if path.exists():
        return [line.strip() for line in path.read_text().splitlines() if "::" in line]
    return []


def collect(paths, workdir: Path, extra: list[str]) -> None:
    cmd = [
        *PYTEST,
        "--collect-only",
        "tests/test_grpo_trainer.py",
    ] + extra
    out = subprocess.run(cmd, cwd=workdir, env=mode_env(paths, workdir, "grpo"), capture_output=True, text=True)
    (workdir / "collection.txt").write_text(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trl", help="bare git mirror of huggingface/trl (a git dir) or a TRL checkout")
    parser.add_argument("--commit", default=None, help="commit of the mirror (default HEAD)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--workdir", default=None, help="where TRL's tests are extracted (default: a new /tmp dir)")
    parser.add_argument(
        "--cache",
        default=os.path.expanduser("~/.cache/trl_soup_grpo_parity/standins"),
        help="where the model / data set stand-ins are built (reused between runs)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        help="run the tests in chunks of N, each chunk under every mode in turn (partial reports then "
        "have complete rows); 0: each mode runs the whole module once",
    )
    parser.add_argument("--report-only", action="store_true", help="only re-write the report from --workdir")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the results already in --workdir and run only the tests without a result in every "
        "mode (with --chunk-size)",
    )
    parser.add_argument("--report-every", type=float, default=120.0, help="seconds between partial reports")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # after '--': extra pytest arguments (e.g. -k)
    a = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    source = TrlSource(a.trl, a.commit)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="grpo_parity_"))
    if workdir.resolve().is_relative_to(REPO):
        raise SystemExit(f"--workdir must be outside the repository ({REPO}): TRL's tests are not part of it")
    workdir.mkdir(parents=True, exist_ok=True)
    command = (
        f"python scripts/grpo_parity/run_parity.py {a.trl}"
        + (f" --commit {source.commit}" if a.commit else "")
        + (f" --chunk-size {a.chunk_size}" if a.chunk_size else "")
        + (f" --dtype {a.dtype}" if a.dtype != "float32" else "")
        + (" -- " + shlex.join(extra) if extra else "")
    )
    notes_path = HERE / "NOTES.md"
    notes = notes_path.read_text().splitlines() if notes_path.exists() else []
    if a.report_only:
        collected = _collection_order(workdir)
        done = [t for t in collected if all(t in mode_results(workdir, m) for m in MODES)]
        running = (
            None
            if len(done) == len(collected)
            else (f"{len(done)} of {len(collected)} collected tests have a result in every mode")
        )
        write_reports(workdir, source.commit, command, notes, running=running)
        return

    extract(source, workdir)
    print(f"[parity] TRL {source.commit} tests extracted to {workdir}", flush=True)
    paths = build_all(Path(a.cache), source, dtype=a.dtype)
    collect(paths, workdir, extra)

    state = {"running": None, "done": False}

    def reporter():
        while not state["done"]:
            time.sleep(a.report_every)
            if not state["done"]:
                try:
                    write_reports(workdir, source.commit, command, notes, running=state["running"])
                except Exception as e:  # a partial file being written: try again next time
                    print(f"[parity] partial report failed: {e!r}", flush=True)

    threading.Thread(target=reporter, daemon=True).start()
    for m in [] if a.resume else a.modes:
        for stale in [*workdir.glob(f"events_{m}.jsonl"), *workdir.glob(f"junit_{m}*.xml"), workdir / f"time_{m}.txt"]:
            stale.unlink(missing_ok=True)
    if a.chunk_size > 0:
        # Interleaved: every chunk of tests runs under each mode in turn, so partial reports have complete rows.
        tests = _collection_order(workdir)
        # Tests that do not train take seconds: run them first, so the first partial report covers most of the suite.
        tests.sort(key=lambda t: "train" in t.split("::")[-1])
        first_tag = 0
        if a.resume:  # the tests with a result in every mode are kept; new chunks get new junit file names
            tests = [t for t in tests if not all(t in mode_results(workdir, m) for m in a.modes)]
            tags = [int(p.stem.rsplit("_", 1)[1]) for m in a.modes for p in workdir.glob(f"junit_{m}_*.xml")]
            first_tag = max(tags, default=-1) + 1  # after every chunk file of every mode: none is overwritten
            print(f"[parity] resuming: {len(tests)} tests without a result in every mode", flush=True)
        chunks = [tests[i : i + a.chunk_size] for i in range(0, len(tests), a.chunk_size)]
        for i, chunk in enumerate(chunks):
            for mode in a.modes:
                state["running"] = f"chunk {i + 1}/{len(chunks)} running under {MODE_TITLES[mode]}"
                run_mode(paths, workdir, mode, extra, chunk, tag=f"_{first_tag + i:03d}")
            state["running"] = f"{i + 1} of {len(chunks)} chunks of tests done"
            write_reports(workdir, source.commit, command, notes, running=state["running"])
    else:
        for mode in a.modes:
            state["running"] = f"{MODE_TITLES[mode]} running"
            run_mode(paths, workdir, mode, extra)
            state["running"] = f"{MODE_TITLES[mode]} done"
            write_reports(workdir, source.commit, command, notes, running=state["running"])
    state["done"] = True
    write_reports(workdir, source.commit, command, notes)
    print(
        f"[parity] report: {REPO / 'docs' / 'grpo_parity.md'}, {HERE / 'FAILURES.md'}; workdir {workdir}", flush=True
    )


if __name__ == "__main__":
    main()
