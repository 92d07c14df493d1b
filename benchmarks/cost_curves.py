"""Cost curves: SOUP / GRPO step time against what makes SOUP's cost grow, one variable at a time (issue 15).

Each point is one run of `benchmarks/soup_vs_grpo.py` (a subprocess; GRPO and SOUP alternate, `--repeats` pairs) on a
random-init toy model that never samples EOS (`--random_init --no_eos`), so every completion, behavior response and
continuation runs to its budget. The sweeps move one variable away from a base point:

    max_completion_length   16 32 64 128 256                   (base 64)
    model_size              hidden x layers: 128x2 256x3 512x3 1024x3, 0.54M to 50M parameters   (base 128x2)
    prefix_ratio            0.1 0.3 0.5 0.7 0.9                (base 0.5)
    refresh_interval        T = 1 2 4 8 16                     (base 8; T = 1 is plain DAPO, no behavior copy)

for each backend / prefetch combination (`--backends`, default `local,vllm_server:0,vllm_server:2`). A point that is
the base point of several sweeps runs once. The vllm_server points of one model size share one behavior server, started
here (`soup_vs_grpo.behavior_server`) and passed to each run as `--server_url`.

Output: ONE JSON (`--output`, rewritten after every run, so `--resume` continues a partial sweep) with every point:
variable, value, backend, prefetch, the per-repeat SOUP/GRPO step-time ratios, their median and spread (max - min),
GRPO's generation share of its step time, the peak memory ratio, and more; a PNG (`--plot`): one panel per variable,
SOUP/GRPO step time (median over repeats, error bars from the lowest to the highest repeat), one line per
backend / prefetch, and GRPO's generation share under it.

    python benchmarks/cost_curves.py --plan                                  # the points and a run-time estimate
    python benchmarks/cost_curves.py                                         # the full sweep (hours; see --plan)
    python benchmarks/cost_curves.py --only prefix_ratio --backends local    # one sweep, one backend
    python benchmarks/cost_curves.py --values max_completion_length=16,256 --repeats 2 --resume
    python benchmarks/cost_curves.py --smoke                                 # 2 tiny points (CI plumbing)
    python benchmarks/cost_curves.py --replot outputs/cost_curves/cost_curves.json   # plot and table, no run
    python benchmarks/cost_curves.py --replot local.json vllm.json --plot both.png    # two sweeps in one plot

Run it on a quiet machine: ratios measured while other processes share the cores move by more than the differences
between points (docs/performance.md, "Cost curves").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("soup_vs_grpo.py")
VOCAB_SIZE = 55  # trl_soup.toy's tokenizer
PROMPT_LENGTH = 14  # "copy:DDDDDDDD="

SWEEPS: dict[str, list] = {
    "max_completion_length": [16, 32, 64, 128, 256],
    "model_size": ["128x2", "256x3", "512x3", "1024x3"],
    "prefix_ratio": [0.1, 0.3, 0.5, 0.7, 0.9],
    "refresh_interval": [1, 2, 4, 8, 16],
}
BASE: dict = {"max_completion_length": 64, "model_size": "128x2", "prefix_ratio": 0.5, "refresh_interval": 8}
DEFAULT_BACKENDS = "local,vllm_server:0,vllm_server:2"
SMOKE = dict(sweeps={"max_completion_length": [8, 12]}, backends="local", steps=3, warmup=1, repeats=1, batch_size=8)
LABELS = {
    "max_completion_length": "max_completion_length (tokens, no EOS)",
    "model_size": "parameters",
    "prefix_ratio": "prefix_ratio",
    "refresh_interval": "refresh interval T (generation batches)",
}

# Run-time model for --plan, rough (calibrated on the 2-core development machine, December 2026): a trainer child
# costs its start-up plus its steps; a GRPO step is a per-token decode overhead plus arithmetic in the parameters.
STARTUP_S = 10.0  # one trainer child: imports, model, TRL set-up
SERVER_START_S = 90.0  # one vLLM CPU behavior server
DECODE_TOKEN_S = 2.5e-3  # per decoding step of a batch, whatever the model (generate's per-call overhead)
FLOP_S = 50e9  # float32 arithmetic, one thread, at hidden <= 512; at 1024 twice that (measured 54 and 109 GFLOP/s)
FLOPS_PER_PARAMETER_TOKEN = 8  # decode (2) + loss forward and backward (6)
SOUP_LOCAL_FACTOR = 1.4  # SOUP / GRPO step, local backend, ratio 0.5
SERVER_TOKEN_S = 0.025  # vLLM CPU server: per behavior token of a 32-row batch (32 requests), toy model
SERVER_FLOP_S = 20e9


# ---------------------------------------------------------------------------------------------------------- the plan
def model_dims(size: str) -> tuple[int, int]:
    """(hidden, layers) of a model size written "HIDDENxLAYERS"."""
    hidden, layers = size.lower().split("x")
    return int(hidden), int(layers)


def parameters(size: str, vocab_size: int = VOCAB_SIZE) -> int:
    """Parameters of the benchmark's CPU model (`soup_vs_grpo.cpu_model_sizes`: head dimension 64, as many KV heads
    as heads, MLP 4 x hidden, untied head, Qwen2's q/k/v biases): per layer 4 h^2 + 3 h (attention) + 12 h^2 (MLP)
    + 2 h (norms), plus both embeddings and the final norm."""
    hidden, layers = model_dims(size)
    return layers * (16 * hidden * hidden + 5 * hidden) + 2 * vocab_size * hidden + hidden


def parse_backends(text: str) -> list[tuple[str, int]]:
    """Backend/prefetch pairs: "local,vllm_server:0,vllm_server:2" -> [("local", 0), ("vllm_server", 0), ...]."""
    combos = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        backend, _, prefetch = item.partition(":")
        if backend not in ("local", "vllm_server"):
            raise ValueError(f"unknown backend {backend!r} in --backends: allowed local, vllm_server[:PREFETCH]")
        prefetch = int(prefetch or 0)
        if backend == "local" and prefetch:
            raise ValueError("local:N with N > 0 in --backends: prefetching needs vllm_server")
        combos.append((backend, prefetch))
    return combos


def _value(variable: str, text: str):
    return text if variable == "model_size" else (float(text) if variable == "prefix_ratio" else int(text))


def point_key(backend: str, prefetch: int, config: dict) -> str:
    """One run's identity: a base point shared by several sweeps has one key."""
    return (
        f"{backend}:{prefetch}|len={config['max_completion_length']}|size={config['model_size']}"
        f"|ratio={config['prefix_ratio']}|T={config['refresh_interval']}"
    )


def plan(sweeps: dict[str, list], backends: list[tuple[str, int]], base: dict = BASE) -> list[dict]:
    """Every point, in sweep order: each variable's values with the others at `base`, for each backend/prefetch."""
    points = []
    for variable, values in sweeps.items():
        for backend, prefetch in backends:
            for value in values:
                config = {**base, variable: value}
                points.append(
                    {
                        "variable": variable,
                        "value": value,
                        "backend": backend,
                        "prefetch": prefetch,
                        "config": config,
                        "parameters": parameters(config["model_size"]),
                        "key": point_key(backend, prefetch, config),
                    }
                )
    return points


def unique_runs(points: list[dict]) -> list[dict]:
    """The points to run, each key once, grouped so that vllm_server runs of one model size are adjacent (one server):
    local first, then vllm_server by model size."""
    seen, runs = set(), []
    for point in points:
        if point["key"] not in seen:
            seen.add(point["key"])
            runs.append(point)
    order = {size: i for i, size in enumerate(dict.fromkeys(p["config"]["model_size"] for p in runs))}
    return sorted(runs, key=lambda p: (p["backend"] != "local", order[p["config"]["model_size"]]))


def grpo_step_seconds(config: dict, batch_size: int) -> float:
    length = config["max_completion_length"]
    arithmetic = FLOPS_PER_PARAMETER_TOKEN * parameters(config["model_size"]) * batch_size * (PROMPT_LENGTH + length)
    hidden, _ = model_dims(config["model_size"])
    return length * DECODE_TOKEN_S + arithmetic / (FLOP_S * max(1.0, hidden / 512))


def steps_for(config: dict, args) -> int:
    """`--steps`, fewer for points whose estimated GRPO step is long (at least `--min_steps`): each trainer run gets
    about `--step_budget_s` seconds of steps."""
    estimated = max(1, round(args.step_budget_s / grpo_step_seconds(config, args.batch_size)))
    return max(args.min_steps, min(args.steps, estimated))


def estimate_seconds(point: dict, args) -> float:
    """Rough wall time of one run (`--repeats` GRPO/SOUP pairs), without the server's start-up."""
    config = point["config"]
    grpo = grpo_step_seconds(config, args.batch_size)
    if config["refresh_interval"] == 1:
        soup = grpo
    elif point["backend"] == "local":
        soup = grpo * SOUP_LOCAL_FACTOR
    else:  # the server's behavior decode shares the cores with the trainer on the development machine
        params = parameters(config["model_size"])
        per_token = SERVER_TOKEN_S + 2 * params * args.batch_size / SERVER_FLOP_S
        soup = grpo + config["max_completion_length"] * per_token
    steps = steps_for(config, args)
    return args.repeats * (2 * STARTUP_S + steps * (grpo + soup))


def estimate_total(runs: list[dict], args) -> float:
    servers = {p["config"]["model_size"] for p in runs if p["backend"] == "vllm_server"}
    return sum(estimate_seconds(p, args) for p in runs) + SERVER_START_S * len(servers)


def print_plan(points: list[dict], runs: list[dict], args) -> None:
    keys = {p["key"] for p in runs}
    print(f"{len(points)} points, {len(keys)} runs (base points shared), {args.repeats} GRPO/SOUP pairs each")
    print(f"{'variable':<22}{'value':>8}{'backend':>14}{'prefetch':>9}{'params':>12}{'steps':>7}{'est. s':>9}")
    for point in points:
        print(
            f"{point['variable']:<22}{point['value']!s:>8}{point['backend']:>14}{point['prefetch']:>9}"
            f"{point['parameters']:>12,}{steps_for(point['config'], args):>7}{estimate_seconds(point, args):>9.0f}"
        )
    total = estimate_total(runs, args)
    print(f"estimated run time: {total / 3600:.1f} h ({total:.0f} s; rough, for a quiet 2-core CPU machine)")


# ------------------------------------------------------------------------------------------------------ aggregation
def aggregate(per_repeat: list[float]) -> dict:
    """Median and spread (max - min) of the per-repeat SOUP/GRPO step-time ratios."""
    return {
        "step_time_ratio_per_repeat": list(per_repeat),
        "step_time_ratio_median": statistics.median(per_repeat),
        "step_time_ratio_min": min(per_repeat),
        "step_time_ratio_max": max(per_repeat),
        "step_time_ratio_spread": max(per_repeat) - min(per_repeat),
    }


def summarize_run(results: dict) -> dict:
    """The point's numbers from one `soup_vs_grpo.py` results JSON."""
    summary, medians, means = results["summary"], results["medians"], results["mean_step_time"]
    return {
        **aggregate(summary["step_time_ratio_per_repeat"]),
        "step_time_ratio_pooled": summary["step_time_ratio"],  # median SOUP step / median GRPO step, all repeats
        "mean_step_time_ratio": means["soup"] / means["grpo"],  # refresh steps included
        "grpo_step_time": medians["grpo"]["step_time"],
        "soup_step_time": medians["soup"]["step_time"],
        "grpo_generation_share": summary["grpo_generation_share"],
        "peak_memory_ratio": summary["peak_memory_ratio"],
        "critical_path_decode_ratio": summary["critical_path_decode_ratio"],
        "total_decode_ratio": summary["total_decode_ratio"],
        "soup_behavior_wait": medians["soup"]["behavior_wait"],
        "soup_continuation": medians["soup"]["continuation"],
    }


# ------------------------------------------------------------------------------------------------------------ runs
def benchmark_command(point: dict, args, output_dir: Path, server_url: str | None) -> list[str]:
    config = point["config"]
    hidden, layers = model_dims(config["model_size"])
    command = [sys.executable, str(SCRIPT), "--mode", point["backend"], "--prefetch", str(point["prefetch"])]
    command += ["--max_completion_length", str(config["max_completion_length"])]
    command += ["--hidden_size", str(hidden), "--num_layers", str(layers), "--random_init", "--no_eos"]
    command += ["--prefix_ratio", str(config["prefix_ratio"]), "--refresh_interval", str(config["refresh_interval"])]
    command += ["--steps", str(steps_for(config, args)), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    command += ["--batch_size", str(args.batch_size), "--output_dir", str(output_dir)]
    command += ["--output", str(output_dir / "results.json")]
    for name in ("trainer_cpus", "server_cpus"):
        if getattr(args, name):
            command += [f"--{name}", getattr(args, name)]
    if server_url:
        command += ["--server_url", server_url]
    return command


def run_point(point: dict, args, server_url: str | None) -> dict:
    output_dir = Path(args.work_dir) / point["key"].replace("|", "_").replace(":", "-").replace("=", "")
    output_dir.mkdir(parents=True, exist_ok=True)
    command = benchmark_command(point, args, output_dir, server_url)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    record = {"steps": steps_for(point["config"], args), "wall_s": time.perf_counter() - start}
    if result.returncode != 0:
        logs = sorted(output_dir.glob("*-*.log"), key=lambda log: log.stat().st_mtime)  # the trainer children's
        child = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
        return {**record, "status": "failed", "error": (result.stderr or result.stdout)[-1500:] + child}
    with open(output_dir / "results.json") as f:
        return {**record, "status": "ok", **summarize_run(json.load(f))}


def shared_server_args(soup_vs_grpo, size: str, args) -> argparse.Namespace:
    """The arguments of soup_vs_grpo's `behavior_server` for the shared server of `size`: soup_vs_grpo's own parser
    with the sweep's model and cores (so every option that function reads has its default)."""
    hidden, layers = model_dims(size)
    argv = ["--mode", "vllm_server", "--random_init", "--no_eos", "--hidden_size", str(hidden)]
    argv += ["--num_layers", str(layers), "--output_dir", str(Path(args.work_dir) / f"server-{size}")]
    return soup_vs_grpo.make_parser().parse_args(
        argv + (["--server_cpus", args.server_cpus] if args.server_cpus else [])
    )


@contextlib.contextmanager
def shared_server(size: str, args):
    """Yield the URL of a behavior server on the model of `size` (soup_vs_grpo's own, `--random_init --no_eos`),
    started here and stopped on leaving, or `--server_url`."""
    if args.server_url:
        yield args.server_url
        return
    sys.path.insert(0, str(SCRIPT.parent))
    import soup_vs_grpo

    server_args = shared_server_args(soup_vs_grpo, size, args)
    os.makedirs(server_args.output_dir, exist_ok=True)
    with soup_vs_grpo.behavior_server(server_args) as url:
        yield url


def load(path: Path) -> dict | None:
    if path.exists():
        with open(path) as f:
            return json.load(f)
    return None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def assemble(points: list[dict], results: dict[str, dict], meta: dict, kept: list[dict] = ()) -> dict:
    """The output JSON: every planned point with its run's numbers (points sharing a run share them), then `kept`
    (points of an earlier plan, as they were)."""
    rows = []
    for point in points:
        row = dict(point)
        if point["key"] in results:
            row.update(results[point["key"]])
        else:
            row["status"] = "pending"
        rows.append(row)
    return {"meta": meta, "points": rows + list(kept)}


def sweep(points: list[dict], runs: list[dict], args, meta: dict) -> dict:
    output = Path(args.output)
    previous = load(output) if args.resume else None
    results, kept = {}, []
    if previous:
        results = {p["key"]: _result(p) for p in previous["points"] if p.get("status") == "ok"}
        # Points of the earlier plan that this one lacks (other backends or sweeps) stay in the JSON.
        planned = {_where(p) for p in points}
        kept = [p for p in previous["points"] if _where(p) not in planned]
        resumed = {k: meta[k] for k in ("command", "started", "load_average_start")}
        meta = {**previous["meta"], "resumed": [*previous["meta"].get("resumed", []), resumed]}
    todo = [p for p in runs if p["key"] not in results]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {output}, {len(todo)} to run", flush=True)
    groups: list[tuple[str | None, list[dict]]] = []
    for point in todo:  # consecutive runs on one server
        server = point["config"]["model_size"] if point["backend"] == "vllm_server" else None
        if groups and groups[-1][0] == server:
            groups[-1][1].append(point)
        else:
            groups.append((server, [point]))
    for server, group in groups:
        with shared_server(server, args) if server else contextlib.nullcontext(None) as url:
            for point in group:
                results[point["key"]] = run_point(point, args, url)
                done = results[point["key"]]
                status = (
                    f"{done['step_time_ratio_median']:.3f} (spread {done['step_time_ratio_spread']:.3f})"
                    if done["status"] == "ok"
                    else "FAILED: " + done["error"].strip().splitlines()[-1][-200:]
                )
                print(f"{point['key']}: {status} in {done['wall_s']:.0f} s", flush=True)
                write_json(output, assemble(points, results, {**meta, "finished": _now()}, kept))
    data = assemble(points, results, {**meta, "finished": _now(), "load_average_end": _load()}, kept)
    write_json(output, data)
    return data


def _where(point: dict) -> tuple:
    return point["variable"], str(point["value"]), point["backend"], point["prefetch"]


def _result(point: dict) -> dict:
    planned = {"variable", "value", "backend", "prefetch", "config", "parameters", "key"}
    return {k: v for k, v in point.items() if k not in planned}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _load() -> list[float] | None:
    with contextlib.suppress(OSError):
        return list(os.getloadavg())
    return None


# --------------------------------------------------------------------------------------------------- plot and table
def merge(datasets: list[dict]) -> dict:
    """Several sweeps' JSON as one (e.g. the local and the vllm_server backends, run separately): their points in
    order, each file's meta under `merged`, the first one's base."""
    if len(datasets) == 1:
        return datasets[0]
    meta = {"base": datasets[0]["meta"].get("base", {}), "merged": [d["meta"] for d in datasets]}
    meta["started"] = min(d["meta"].get("started", "") for d in datasets)
    return {"meta": meta, "points": [p for d in datasets for p in d["points"]]}


def combo_label(backend: str, prefetch: int) -> str:
    return backend if backend == "local" else f"{backend}, prefetch {prefetch}"


def _x(point: dict):
    return point["parameters"] if point["variable"] == "model_size" else point["value"]


def plot(data: dict, path: str | Path) -> Path:
    """One column per variable: SOUP/GRPO step time (median over repeats, bars from the lowest to the highest repeat)
    on top, GRPO's generation share of its step below; one line per backend / prefetch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    points = [p for p in data["points"] if p.get("status") == "ok"]
    variables = list(dict.fromkeys(p["variable"] for p in data["points"]))
    fig, axes = plt.subplots(
        2,
        len(variables),
        figsize=(max(6.0, 4.2 * len(variables)), 6.4),
        squeeze=False,
        sharey="row",
        height_ratios=[2, 1],
    )
    for column, variable in enumerate(variables):
        top, bottom = axes[0][column], axes[1][column]
        rows = [p for p in points if p["variable"] == variable]
        for combo in dict.fromkeys((p["backend"], p["prefetch"]) for p in rows):
            line = sorted((p for p in rows if (p["backend"], p["prefetch"]) == combo), key=_x)
            xs = [_x(p) for p in line]
            medians = [p["step_time_ratio_median"] for p in line]
            errors = [
                [m - p["step_time_ratio_min"] for m, p in zip(medians, line, strict=True)],
                [p["step_time_ratio_max"] - m for m, p in zip(medians, line, strict=True)],
            ]
            top.errorbar(xs, medians, yerr=errors, marker="o", capsize=3, label=combo_label(*combo))
            bottom.plot(xs, [p["grpo_generation_share"] for p in line], marker="o", label=combo_label(*combo))
        ticks = sorted({_x(p): p for p in rows}.items())
        for axis in (top, bottom):
            if variable in ("max_completion_length", "refresh_interval", "model_size"):
                axis.set_xscale("log", base=2 if variable != "model_size" else 10)
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xticks(
                [x for x, _ in ticks], [f"{x / 1e6:.1f}M" if variable == "model_size" else f"{x:g}" for x, _ in ticks]
            )
            axis.grid(alpha=0.3)
        top.axhline(1.0, color="grey", linewidth=0.8)
        top.axhline(1.27, color="grey", linewidth=0.8, linestyle="--")  # the paper's 92.63 / 72.75 s per step
        top.set_title(variable)
        bottom.set_xlabel(LABELS.get(variable, variable))
        bottom.set_ylim(0, 1)
    axes[0][0].set_ylabel("step time SOUP / GRPO")
    axes[1][0].set_ylabel("GRPO generation share")
    axes[0][0].legend(fontsize=8)
    base = ", ".join(f"{k} {v}" for k, v in data["meta"].get("base", {}).items())
    when = data["meta"].get("started", "")
    note = f"\n{data['meta']['note']}" if data["meta"].get("note") else ""
    fig.suptitle(
        f"SOUP / GRPO step time (dashed: the paper's 1.27), one variable at a time around\n{base}; {when}{note}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(data: dict) -> str:
    """A markdown table of every point (base points repeated in each sweep)."""
    lines = [
        "| variable | value | backend | SOUP/GRPO median | per repeat | spread | decode SOUP/GRPO (total, critical) "
        "| GRPO s/step | GRPO gen. share | peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in data["points"]:
        value = f"{p['value']} ({p['parameters'] / 1e6:.1f}M)" if p["variable"] == "model_size" else p["value"]
        combo = combo_label(p["backend"], p["prefetch"])
        if p.get("status") != "ok":
            lines.append(f"| {p['variable']} | {value} | {combo} | {p.get('status')} | | | | | | |")
            continue
        repeats = " ".join(f"{r:.2f}" for r in p["step_time_ratio_per_repeat"])
        lines.append(
            f"| {p['variable']} | {value} | {combo} | **{p['step_time_ratio_median']:.2f}** | {repeats} "
            f"| {p['step_time_ratio_spread']:.2f} "
            f"| {p['total_decode_ratio']:.2f}, {p['critical_path_decode_ratio']:.2f} "
            f"| {p['grpo_step_time']:.3f} | {p['grpo_generation_share']:.2f} "
            f"| {p['peak_memory_ratio']:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ main
def build_sweeps(args) -> dict[str, list]:
    sweeps = dict(SMOKE["sweeps"]) if args.smoke else dict(SWEEPS)
    for item in args.values:
        variable, _, values = item.partition("=")
        if variable not in SWEEPS:
            raise SystemExit(f"--values {item!r}: unknown variable; allowed: {', '.join(SWEEPS)}")
        sweeps[variable] = [_value(variable, v) for v in values.split(",") if v]
    if args.only:
        only = [v for item in args.only for v in item.split(",")]
        unknown = [v for v in only if v not in SWEEPS]
        if unknown:
            raise SystemExit(f"--only {','.join(unknown)}: unknown variable; allowed: {', '.join(SWEEPS)}")
        sweeps = {v: sweeps.get(v, SWEEPS[v]) for v in only}
    return sweeps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", "--dry_run", action="store_true", help="print the points and a time estimate only")
    parser.add_argument("--smoke", action="store_true", help="2 tiny local points (CI): max_completion_length 8, 12")
    parser.add_argument("--only", action="append", default=[], help="run these sweeps only (VARIABLE[,VARIABLE])")
    parser.add_argument(
        "--values", action="append", default=[], help="VARIABLE=V1,V2,...: these values for that sweep"
    )
    parser.add_argument("--backends", default=None, help=f"backend[:prefetch],... (default {DEFAULT_BACKENDS})")
    parser.add_argument("--repeats", type=int, default=None, help="GRPO/SOUP pairs per point (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per trainer run, at most (default 24)")
    parser.add_argument("--min_steps", type=int, default=8, help="steps per trainer run, at least")
    parser.add_argument(
        "--step_budget_s",
        type=float,
        default=60.0,
        help="seconds of steps per trainer run, by the rough estimate: long steps get fewer (>= --min_steps)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out (default 2)")
    parser.add_argument("--batch_size", type=int, default=None, help="completions per step (default 32)")
    parser.add_argument("--trainer_cpus", default=None, help="passed to soup_vs_grpo.py")
    parser.add_argument("--server_cpus", default=None, help="passed to soup_vs_grpo.py (and the shared server)")
    parser.add_argument("--server_url", default=None, help="use this behavior server (one model size only)")
    parser.add_argument("--output", default="outputs/cost_curves/cost_curves.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: next to --output)")
    parser.add_argument("--work_dir", default=None, help="per-run folders (default: next to --output)")
    parser.add_argument("--note", default=None, help="a line for the JSON's meta and the plot's title")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the ok points of --output, run the others; points of --output outside this plan are kept too",
    )
    parser.add_argument(
        "--replot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="write the plot and print the table of these JSON files (their points together), run nothing",
    )
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else dict(backends=DEFAULT_BACKENDS, steps=24, warmup=2, repeats=3, batch_size=32)
    for name in ("backends", "steps", "warmup", "repeats", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.smoke:
        args.min_steps = min(args.min_steps, args.steps)
    output = Path(args.output)
    args.plot = args.plot or str(output.with_suffix(".png"))
    args.work_dir = args.work_dir or str(output.parent / "runs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        data = merge([load(Path(path)) for path in args.replot])
        if args.note:
            data["meta"]["note"] = args.note
        print(table(data))
        print(f"plot: {plot(data, args.plot)}")
        return 0
    sweeps = build_sweeps(args)
    points = plan(sweeps, parse_backends(args.backends))
    runs = unique_runs(points)
    print_plan(points, runs, args)
    if args.plan:
        return 0
    meta = {
        "command": " ".join(["python", "benchmarks/cost_curves.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": _now(),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "load_average_start": _load(),
        "base": BASE,
        "sweeps": sweeps,
        "backends": args.backends,
        "repeats": args.repeats,
        "steps_max": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "model": "random-init toy Qwen2 (trl_soup.toy), EOS unreachable (soup_vs_grpo.py --random_init --no_eos)",
        "estimated_s": estimate_total(runs, args),
        "note": args.note,
    }
    data = sweep(points, runs, args, meta)
    print(table(data))
    print(f"plot: {plot(data, args.plot)}")
    failed = [p["key"] for p in data["points"] if p.get("status") != "ok"]
    if failed:
        print(f"{len(set(failed))} runs failed: {sorted(set(failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so a behavior server started here is stopped (it runs in its own session).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
