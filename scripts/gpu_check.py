"""GPU check (project issue 15, item 3): one command on a bare CUDA host, one JSON. Started by scripts/gpu_check.sh.

Parts, in this order, each but the first in a child process with its own time limit, each recorded in
`<out>/gpu_check.json` as soon as it ends (a failure or a timeout leaves the other parts and the JSON):

- preflight: Python, torch, the CUDA device. Without CUDA the check stops at once ("needs a CUDA GPU ..."), exit 2.
- install: the pinned wheels of scripts/gpu_wheels.sh, from `.gpu_wheels/`, into a `--target` folder that goes first
  on the children's PYTHONPATH, the working tree after it (trl_soup is not installed). Not a
  `venv --system-site-packages`: the host's python3 is itself a virtual environment (/opt/torch/.venv), and a venv
  made from it sees the base interpreter's site-packages, not the one that holds torch.
- versions: the version and location of every package the children import, and the requirements left unmet.
- numerics: bf16 relay numerics at identical weights. A random-init tiny Qwen2 (trl_soup.toy) trains 6 steps with
  learning rate 0 on CUDA (T = 3: steps 2, 3, 5 and 6 are relay steps), once with bf16 weights and once with float32
  weights under bf16 autocast (the benchmark's set-up), with a separate pi_old forward
  (`old_logps_from_loss_forward=False`). Reported: `soup/log_ratio/prefix_abs_mean` (learner vs the behavior copy's
  sampling log-probs) and `soup/log_ratio/continuation_abs_mean` (learner vs the pi_old forward) of every relay step,
  both ~0 at identical weights up to bf16 rounding, and the largest weight change (0 with learning rate 0).
- pytest: `tests/test_gpu.py -m gpu` (the vLLM tests skip: no vLLM on the host).
- bench_ratio, bench_fixed_budget: `benchmarks/soup_vs_grpo.py --mode gpu` (local backend, bf16, random-init body of
  Qwen2.5-0.5B), one GRPO and one SOUP run each: median step times, CUDA peak memory (max_memory_allocated), ratios.
  The benchmark's children are run with their output kept (in the part's log) rather than discarded.

Total time is bounded by `--budget-s` (default 450 s): each part's limit is the smaller of its own cap and what is
left; a part that no longer fits is skipped, and the JSON says so. Exit status: 0 every part ok, 1 some part not ok,
2 no CUDA device or no wheels. `--cpu-smoke` runs every part on the CPU with tiny settings to dry-run the plumbing
(its numbers say nothing about a GPU). Only the standard library is imported at module level: the orchestrator runs
under the host's python3 before anything is installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS_SCRIPT = os.path.join(REPO, "scripts", "gpu_wheels.sh")
NO_CUDA = "needs a CUDA GPU"
PART_CAPS = {  # seconds: the most each part may take
    "install": 90,
    "versions": 60,
    "numerics": 120,
    "pytest": 150,
    "bench_ratio": 200,
    "bench_fixed_budget": 200,
}
MIN_PART_S = 20  # a part is skipped when less than this is left of the budget
RESERVE_S = 5  # kept back at the end for writing the JSON
PART_LOGS = {  # at most 8 files come back from the device machine: the JSON, gpu_check.log and these
    "install": "setup.log",
    "versions": "setup.log",
    "numerics": "numerics.log",
    "pytest": "pytest.log",
    "bench_ratio": "bench_ratio.log",
    "bench_fixed_budget": "bench_fixed_budget.log",
}
NUMERICS_VARIANTS = ("bf16_weights", "fp32_weights_bf16_autocast")
NUMERICS_TOLERANCE = 5e-2  # tests/test_gpu.py's per-token tolerance on bf16 behavior log-probs


def pinned_wheels(path: str = WHEELS_SCRIPT) -> list[str]:
    """The `NAME==VERSION` entries of the `WHEELS=( ... )` array of scripts/gpu_wheels.sh (comments dropped)."""
    with open(path) as f:
        text = f.read()
    match = re.search(r"^WHEELS=\((.*?)^\)", text, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"no WHEELS=( ... ) array in {path}")
    return [line.split("#", 1)[0].strip() for line in match.group(1).splitlines() if line.split("#", 1)[0].strip()]


def wheel_runs_here(filename: str) -> bool:
    """Whether a pure-Python wheel's Python tag (`py3`, `py312`, ...) fits this interpreter (for --cpu-smoke)."""
    tags = filename.split("-")[-3].split(".")
    here = f"{sys.version_info.major}{sys.version_info.minor}"
    return any(tag in ("py3", f"py{here}", f"cp{here}") for tag in tags)


def wheel_files(wheels_dir: str, specs: list[str]) -> tuple[list[str], list[str]]:
    """`(found, missing)`: the wheel file of each pinned `NAME==VERSION` in `wheels_dir`, and the specs without one."""
    names = os.listdir(wheels_dir) if os.path.isdir(wheels_dir) else []
    found, missing = [], []
    for spec in specs:
        name, version = spec.split("==")
        prefix = f"{name.replace('-', '_')}-{version}-".lower()
        hits = [n for n in names if n.lower().startswith(prefix) and n.endswith(".whl")]
        if hits:
            found.append(os.path.join(wheels_dir, hits[0]))
        else:
            missing.append(spec)
    return found, missing


def json_safe(value):
    """NaN and infinities as None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(data), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------------------
# Parts that run in a child process (`--part NAME --part-result FILE`)
# ---------------------------------------------------------------------------------------------------------------------


def part_versions(args) -> dict:
    import importlib
    import importlib.metadata as metadata
    import importlib.util

    packages = {}
    for module in (
        "torch",
        "transformers",
        "trl",
        "datasets",
        "accelerate",
        "peft",
        "tokenizers",
        "huggingface_hub",
        "safetensors",
        "pyarrow",
        "fsspec",
        "dill",
        "multiprocess",
        "numpy",
        "pandas",
        "regex",
        "pytest",
        "trl_soup",
    ):
        try:
            imported = importlib.import_module(module)
            packages[module] = {
                "version": getattr(imported, "__version__", None),
                "path": os.path.dirname(imported.__file__ or ""),
            }
        except Exception as error:  # recorded, not raised
            packages[module] = {"error": f"{type(error).__name__}: {error}"}
    for module in ("deepspeed", "vllm", "math_verify"):  # absent on the host; found, not imported (vLLM is slow)
        packages[module] = {"present": importlib.util.find_spec(module) is not None}

    import torch

    cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        props = torch.cuda.get_device_properties(0)
        cuda.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
            devices=torch.cuda.device_count(),
        )

    from packaging.requirements import Requirement

    def unmet(requirements, owner):
        problems = []
        for text in requirements or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                have = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{owner}: {requirement} (not installed)")
                continue
            if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
                problems.append(f"{owner}: {requirement} (have {have})")
        return problems

    problems = []
    for dist in ("trl", "datasets", "transformers", "accelerate", "peft"):
        try:
            problems += unmet(metadata.requires(dist), dist)
        except metadata.PackageNotFoundError:
            problems.append(f"{dist}: not installed")
    try:
        import tomllib

        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            problems += unmet(tomllib.load(f)["project"]["dependencies"], "trl_soup")
    except ImportError:  # Python 3.10
        pass
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "sys_path_head": sys.path[:4],
        "packages": packages,
        "cuda": cuda,
        "unmet_requirements": problems,
    }


def part_numerics(args) -> dict:
    import torch

    from trl_soup import SOUPConfig, SOUPTrainer, toy

    on_gpu = not args.cpu_smoke
    results = {}
    for variant in NUMERICS_VARIANTS:
        tokenizer = toy.build_tokenizer()
        model = toy.build_tiny_model(tokenizer, seed=0)
        if variant == "bf16_weights" and on_gpu:
            model = model.to(torch.bfloat16)
        before = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        settings = {
            **toy.TOY_TRAINING_DEFAULTS,
            "use_cpu": not on_gpu,
            "bf16": on_gpu,
            "learning_rate": 0.0,
            "max_steps": 6,
            "behavior_refresh_interval": 3,
            "per_device_train_batch_size": 32,
            "max_completion_length": 16,
            "disable_tqdm": True,
            # a separate pi_old forward, so that the continuation's ratio compares two forwards (else it is 1)
            "old_logps_from_loss_forward": False,
        }
        config = SOUPConfig(output_dir=os.path.join(args.workdir, f"numerics-{variant}"), **settings)
        trainer = SOUPTrainer(
            model=model,
            reward_funcs=toy.char_match_reward,
            args=config,
            train_dataset=toy.build_dataset(256, seed=0),
            processing_class=tokenizer,
        )
        start = time.perf_counter()
        trainer.train()
        after = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        change = max((after[k].detach().float().cpu() - v).abs().max().item() for k, v in before.items())
        relay = [h for h in trainer.state.log_history if h.get("soup/relay_batch") and "loss" in h]
        prefix = [h.get("soup/log_ratio/prefix_abs_mean") for h in relay]
        continuation = [h.get("soup/log_ratio/continuation_abs_mean") for h in relay]
        finite = [v for v in prefix + continuation if isinstance(v, float) and math.isfinite(v)]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results[variant] = {
            "dtype": str(next(trainer.model.parameters()).dtype),
            "relay_steps": [h.get("step") for h in relay],
            "prefix_abs_mean": prefix,
            "continuation_abs_mean": continuation,
            "prefix_abs_mean_max": max((v for v in prefix if v is not None and math.isfinite(v)), default=None),
            "continuation_abs_mean_max": max(
                (v for v in continuation if v is not None and math.isfinite(v)), default=None
            ),
            "max_weight_change": change,
            "losses_finite": all(math.isfinite(x) for x in losses),
            "within_tolerance": bool(finite) and max(finite) <= NUMERICS_TOLERANCE,
            "seconds": round(time.perf_counter() - start, 2),
        }
        print(f"numerics {variant}: {json.dumps(json_safe(results[variant]))}", flush=True)
        del trainer, model
        if on_gpu:
            torch.cuda.empty_cache()
    results["tolerance"] = NUMERICS_TOLERANCE
    return results


def part_bench(args) -> dict:
    """benchmarks/soup_vs_grpo.py's main() in this process, its children's output kept in this part's log."""
    import importlib.util
    import types

    path = os.path.join(REPO, "benchmarks", "soup_vs_grpo.py")
    spec = importlib.util.spec_from_file_location("soup_vs_grpo", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(command, *a, **kwargs):  # the benchmark discards its children's output: keep it (this part's log)
        kwargs["stdout"] = kwargs["stderr"] = None
        print("[bench] child: " + " ".join(command[2:6]), flush=True)
        return subprocess.run(command, *a, **kwargs)

    bench.subprocess = types.SimpleNamespace(
        **{k: getattr(subprocess, k) for k in ("DEVNULL", "PIPE", "STDOUT", "Popen", "TimeoutExpired")}, run=run
    )
    output_dir = os.path.join(args.workdir, f"bench-{args.strategy}")
    output = os.path.join(output_dir, "results.json")
    if args.cpu_smoke:
        sizes = "--mode local --steps 3 --warmup 1 --batch_size 8 --max_completion_length 8".split()
    else:
        sizes = f"--mode gpu --steps {args.bench_steps} --warmup 2 --batch_size {args.bench_batch_size}".split()
        sizes += ["--max_completion_length", str(args.bench_max_completion_length)]
    argv = [path, *sizes, "--repeats", "1", "--prefix_strategy", args.strategy]
    argv += ["--output_dir", output_dir, "--output", output]
    print("[bench] " + " ".join(argv), flush=True)
    sys.argv = argv
    bench.main()
    with open(output) as f:
        results = json.load(f)
    medians = results["medians"]
    return {
        "argv": argv[1:],
        "summary": results["summary"],
        "step_time_s": {k: medians[k]["step_time"] for k in ("grpo", "soup")},
        "mean_step_time_s": results["mean_step_time"],
        # the benchmark's "peak_rss_mib" is torch.cuda.max_memory_allocated in --mode gpu
        ("cuda_peak_memory_mib" if not args.cpu_smoke else "peak_rss_mib"): results["peak_rss_mib"],
        "soup_breakdown_s": {
            k: medians["soup"][k]
            for k in ("behavior_wait", "behavior_sample", "continuation", "logp_forwards", "refresh")
        },
        "decode_per_step": {
            k: {w: medians[w][k] for w in ("grpo", "soup")} for k in ("decode_critical", "decode_total")
        },
    }


def part_main(args) -> int:
    functions = {"versions": part_versions, "numerics": part_numerics, "bench": part_bench}
    result = functions[args.part](args)
    write_json(args.part_result, result)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------------------------------


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
        self.json_path = os.path.join(args.out, "gpu_check.json")
        self.data = {
            "check": "trl_soup GPU check (scripts/gpu_check.sh)",
            "status": "running",
            "error": None,
            "cpu_smoke": args.cpu_smoke,
            "started_at": datetime.datetime.fromtimestamp(self.t0, datetime.timezone.utc).isoformat(),
            "elapsed_s": 0.0,
            "budget_s": args.budget_s,
            "settings": {
                "bench_steps": args.bench_steps,
                "bench_batch_size": args.bench_batch_size,
                "bench_max_completion_length": args.bench_max_completion_length,
                "wheels": pinned_wheels(),
            },
            "preflight": {},
            "parts": {},
            "summary": {},
        }
        self.env = dict(os.environ)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.json_path, self.data)

    def stop(self, message: str, code: int = 2) -> int:
        self.data.update(status="error", error=message)
        self.save()
        print(f"gpu_check: {message}", file=sys.stderr, flush=True)
        log(f"wrote {self.json_path} (status error, exit {code})")
        return code

    def preflight(self) -> str | None:
        """None when a CUDA device is there (or --cpu-smoke), else the reason."""
        info = {"python": sys.version.split()[0], "executable": sys.executable}
        self.data["preflight"] = info
        try:
            import torch
        except Exception as error:
            info["torch_error"] = f"{type(error).__name__}: {error}"
            return f"{NO_CUDA} and PyTorch with CUDA, but `import torch` failed ({info['torch_error']})"
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if info["cuda_available"]:
            info.update(device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count())
            return None
        if self.args.cpu_smoke:
            return None
        return (
            f"{NO_CUDA}: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False). "
            "Run it on the GPU host with the device tool (docs/performance.md, 'GPU check'); "
            "--cpu-smoke dry-runs the parts on the CPU instead"
        )

    def run_part(self, name: str, command: list[str], env: dict) -> dict:
        """Run one part's child process within its time limit; its output goes to the part's log in <out>."""
        left = self.args.budget_s - self.elapsed() - RESERVE_S
        limit = min(PART_CAPS[name], left)
        entry = {"status": "skipped", "log": PART_LOGS[name]}
        self.data["parts"][name] = entry
        if limit < MIN_PART_S:
            entry["error"] = f"not started: {left:.0f} s of the {self.args.budget_s:.0f} s budget left"
            log(f"{name}: skipped ({entry['error']})")
            self.save()
            return entry
        log_path = os.path.join(self.args.out, PART_LOGS[name])
        log(f"{name}: started (limit {limit:.0f} s, log {PART_LOGS[name]})")
        start = time.time()
        with open(log_path, "ab") as out:
            out.write(f"\n===== {name}: {' '.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                code = None
                os.killpg(process.pid, signal.SIGKILL)  # the part and every process it started
                process.wait()
        entry["seconds"] = round(time.time() - start, 1)
        entry["returncode"] = code
        if code == 0:
            entry["status"] = "ok"
        else:
            entry["status"] = "timeout" if code is None else "failed"
            entry["error"] = f"timed out after {limit:.0f} s" if code is None else f"exit status {code}"
            entry["log_tail"] = tail(log_path)
        log(f"{name}: {entry['status']} in {entry['seconds']} s" + (f" ({entry['error']})" if code != 0 else ""))
        if code != 0:
            print(entry["log_tail"], flush=True)
        self.save()
        return entry

    def python_part(self, name: str, env: dict, *extra: str) -> dict:
        result_file = os.path.join(self.workdir, f"{name}.json")
        command = [sys.executable, os.path.abspath(__file__), "--part", extra[0] if extra else name]
        command += ["--part-result", result_file, "--workdir", self.workdir, *extra[1:]]
        if self.args.cpu_smoke:
            command.append("--cpu-smoke")
        for flag in ("bench_steps", "bench_batch_size", "bench_max_completion_length"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(self.args, flag))]
        entry = self.run_part(name, command, env)
        if entry["status"] == "ok":
            try:
                with open(result_file) as f:
                    entry.update(json.load(f))
            except (OSError, ValueError) as error:
                entry.update(status="failed", error=f"no result from the part: {error}")
            self.save()
        return entry

    def install(self, env: dict) -> bool:
        specs = pinned_wheels()
        found, missing = wheel_files(self.args.wheels, specs)
        site = os.path.join(self.workdir, "site")
        if missing and self.args.cpu_smoke:
            self.data["parts"]["install"] = {"status": "skipped", "error": f"no wheels for {missing} (CPU smoke)"}
            log("install: skipped (CPU smoke without wheels: the current environment is used)")
            return True
        left_out = []
        if self.args.cpu_smoke:  # e.g. multiprocess's py312 wheel on another Python: the environment's copy is used
            left_out = [os.path.basename(f) for f in found if not wheel_runs_here(os.path.basename(f))]
            found = [f for f in found if wheel_runs_here(os.path.basename(f))]
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        command += ["--no-cache-dir", "--upgrade", "--target", site, *found]
        entry = self.run_part("install", command, env)
        entry["wheels"] = [os.path.basename(f) for f in found]
        if left_out:
            entry["left_out_for_this_python"] = left_out
        entry["site"] = site
        self.save()
        return entry["status"] == "ok"

    def summarize(self) -> None:
        parts, summary = self.data["parts"], self.data["summary"]
        numerics = parts.get("numerics", {})
        for variant in NUMERICS_VARIANTS:
            if variant in numerics:
                summary[f"numerics_{variant}"] = {
                    k: numerics[variant][k]
                    for k in ("prefix_abs_mean_max", "continuation_abs_mean_max", "max_weight_change")
                }
        if "summary_line" in parts.get("pytest", {}):
            summary["pytest"] = parts["pytest"]["summary_line"]
        for strategy in ("ratio", "fixed_budget"):
            bench = parts.get(f"bench_{strategy}", {})
            if "summary" in bench:
                summary[f"bench_{strategy}"] = {
                    "step_time_ratio": bench["summary"].get("step_time_ratio"),
                    "peak_memory_ratio": bench["summary"].get("peak_memory_ratio"),
                    "step_time_s": bench["step_time_s"],
                    "peak_mib": bench.get("cuda_peak_memory_mib", bench.get("peak_rss_mib")),
                }
        summary["seconds"] = {name: entry.get("seconds") for name, entry in parts.items()}

    def pytest(self, env: dict) -> None:
        xml = os.path.join(self.workdir, "pytest.xml")
        command = [sys.executable, "-m", "pytest", "-q", "-ra", "-m", "gpu", "tests/test_gpu.py"]
        command += ["-p", "no:cacheprovider", f"--junitxml={xml}", f"--basetemp={self.workdir}/pytest"]
        entry = self.run_part("pytest", command, env)
        if entry.get("returncode") == 5:
            entry["error"] = "pytest collected no tests (exit status 5)"
        lines = [ln for ln in tail(os.path.join(self.args.out, PART_LOGS["pytest"]), 40).splitlines() if ln.strip()]
        counts = [ln for ln in lines if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", ln)]
        if counts:
            entry["summary_line"] = counts[-1].strip("= ")
        try:
            tests = {}
            for case in ET.parse(xml).getroot().iter("testcase"):
                outcome, message = "passed", None
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome, message = child.tag, (child.get("message") or "")[:500]
                tests[case.get("name")] = {
                    "outcome": outcome,
                    "seconds": float(case.get("time", 0)),
                    "message": message,
                }
            entry["tests"] = tests
        except (OSError, ET.ParseError) as error:
            entry.setdefault("error", f"no junit report: {error}")
        self.save()

    def main(self) -> int:
        os.makedirs(self.args.out, exist_ok=True)
        log(f"output: {self.json_path}; budget {self.args.budget_s:.0f} s")
        self.save()
        reason = self.preflight()
        if reason:
            return self.stop(reason)
        log(f"preflight: {json.dumps(self.data['preflight'])}")
        if not self.args.cpu_smoke:
            _, missing = wheel_files(self.args.wheels, pinned_wheels())
            if missing:
                return self.stop(
                    f"no wheels for {', '.join(missing)} in {self.args.wheels}: run `bash scripts/gpu_wheels.sh` "
                    "where pip reaches the registry and name .gpu_wheels in the device call's carry"
                )
        self.workdir = tempfile.mkdtemp(prefix="gpu_check-")
        try:
            return self._parts()
        except Exception as error:  # a bug here must still leave a JSON that says what happened
            self.data["traceback"] = traceback.format_exc()
            return self.stop(f"the check itself failed: {type(error).__name__}: {error}", code=1)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _parts(self) -> int:
        env = dict(self.env)
        env.update(
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            HF_HOME=os.path.join(self.workdir, "hf_home"),
        )
        if not self.install(env):
            self.data["error"] = "the wheels did not install (see parts.install)"
        site = os.path.join(self.workdir, "site")
        paths = ([site] if os.path.isdir(site) else []) + [REPO]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.python_part("versions", env)
        self.python_part("numerics", env)
        self.pytest(env)
        self.python_part("bench_ratio", env, "bench", "--strategy", "ratio")
        self.python_part("bench_fixed_budget", env, "bench", "--strategy", "fixed_budget")
        self.summarize()
        bad = [name for name, entry in self.data["parts"].items() if entry["status"] not in ("ok",)]
        if self.args.cpu_smoke:
            bad = [name for name in bad if not (name == "install" and self.data["parts"][name]["status"] == "skipped")]
        self.data["status"] = ("cpu_smoke" if self.args.cpu_smoke else "ok") if not bad else "failed"
        if bad and not self.data["error"]:
            self.data["error"] = f"parts not ok: {', '.join(bad)}"
        self.save()
        log(f"summary: {json.dumps(json_safe(self.data['summary']))}")
        log(f"wrote {self.json_path} (status {self.data['status']}, {self.elapsed():.0f} s)")
        return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "outputs", "gpu_check"))
    parser.add_argument("--budget-s", type=float, default=450.0, help="total seconds for every part (default 450)")
    parser.add_argument("--wheels", default=os.path.join(REPO, ".gpu_wheels"), help="folder of the pinned wheels")
    parser.add_argument("--cpu-smoke", action="store_true", help="dry-run every part on the CPU, tiny sizes")
    parser.add_argument("--bench-steps", type=int, default=8, help="steps per benchmark run (2 warm-up)")
    parser.add_argument("--bench-batch-size", type=int, default=32)
    parser.add_argument("--bench-max-completion-length", type=int, default=64)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part-result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ratio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return part_main(args)
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
