"""What each command prints, made from the JSON its report writes (`report.to_json()`, the
file `--json` writes): `format_inspect`, `format_bench`, `format_tuned` (tune-tasks and
measure), `format_cost_model_metrics` (train-cost-model), `format_collect`,
`format_remeasure`. Pure functions of dicts: a summary can be printed again from a saved file.
"""

from __future__ import annotations

import math
from typing import Any

from ago_search.report.tables import text_table

__all__ = [
    "format_bench",
    "format_collect",
    "format_cost_model_metrics",
    "format_inspect",
    "format_remeasure",
    "format_search",
    "format_tuned",
]

# The reference runtime of a bench result (ago_search.bench.ORT).
_REFERENCE = "onnxruntime"
# The label files `collect` writes beside its export (ago_search.collect.MODELS_FILE, TASKS_FILE).
_LABEL_FILES = ("models.json", "tasks.json")
_COST_MODEL_METRICS = ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak", "mape")


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _short(op: str) -> str:
    return op.removeprefix("relax.").removeprefix("nn.")


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4g}" if seconds is not None else "-"


def _err(value: float | str | None) -> str:
    """An error value of an output check; JSON writes inf and nan as strings."""
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.2e}" if math.isfinite(value) else str(value)


# ---------------------------------------------------------------------------------------
# inspect


def format_inspect(data: dict[str, Any]) -> str:
    """`InspectReport.to_json()`: the model, its operators table, TVM's default groups and,
    when a plan was asked for, its groups."""
    s = data["summary"]
    lines = [f"model: {data['model']}"]
    lines.append(
        "inputs: "
        + ", ".join(
            f"{i['name']} {i['dtype']}[{'x'.join(map(str, i['shape']))}]" for i in data["inputs"]
        )
    )
    opset, original = data["opset"], data["original_opset"]
    opset_text = f"{opset}" if opset == original else f"{original} -> {opset}"
    lines.append(
        f"opset {opset_text}; {data['folded_nodes']} shape-computing nodes folded to constants"
    )
    rewrite = data.get("rewrite")
    if rewrite:
        fired = [r for r in rewrite["rules"] if r["ops_removed"] > 0]
        lines.append(
            f"rewrites: {rewrite['ops_before']} -> {rewrite['ops_after']} operators ("
            + (", ".join(f"{r['rule']} -{r['ops_removed']}" for r in fired) or "none fired")
            + ")"
        )
    lines.append(
        f"operators: {s['nodes']} ({s['complex_ops']} complex), FLOPs: {_si(s['flops'])}, "
        f"parameters: {_si(s['params'])}, tensor traffic: {_si(s['bytes'], 'B')}"
    )
    lines.append("")
    lines.append(
        text_table(
            ["operator", "count", "FLOPs", "params", "mapping", "complex"],
            [
                [
                    op["op"],
                    op["count"],
                    _si(op["flops"]),
                    _si(op["params"]),
                    op["mapping"],
                    "yes" if op["complex"] else "",
                ]
                for op in s["ops"]
            ],
            align="<>>><<",
        )
    )
    lines.append("")
    lines.append("mapping types: " + ", ".join(f"{k} {v}" for k, v in s["mapping_counts"].items()))
    groups = data["tvm_default_groups"]["groups"]
    by_complex: dict[int, int] = {}
    for g in groups:
        by_complex[g["complex_ops"]] = by_complex.get(g["complex_ops"], 0) + 1
    lines.append(
        f"TVM default fusion: {len(groups)} groups; by complex ops per group: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(by_complex.items()))
    )
    for g in sorted(groups, key=lambda g: (-len(g["nodes"]), g["name"]))[:5]:
        ops = ", ".join(_short(o) for o in g["ops"])
        lines.append(f"  {g['name']}: {len(g['nodes'])} ops ({ops})")
    plan = data.get("plan")
    if plan:
        lines.append("")
        lines.append(
            f"plan '{plan['name']}': {plan['count']} groups, {plan['multi_complex']} with "
            "several complex ops"
        )
        lines += [f"  note: {note}" for note in plan["notes"]]
        laid = any(g.get("layout", "NCHW") != "NCHW" for g in plan["groups"])
        for g in plan["groups"]:
            ops = ", ".join(_short(o) for o in g["ops"][:8]) + (
                ", ..." if len(g["ops"]) > 8 else ""
            )
            layout = f" {g.get('layout', 'NCHW'):<8}" if laid else ""
            lines.append(
                f"  {g['name']:<40}{layout} {len(g['nodes']):>3} ops, {g['complex_ops']} complex"
                f"  [{ops}]"
            )
        transforms = plan.get("transforms") or []
        if laid or transforms:
            lines.append(f"layout transforms placed: {len(transforms)}")
            for t in transforms:
                shape = "x".join(map(str, t["shape"]))
                lines.append(f"  {t['tensor']} [{shape}]: {t['from']} -> {t['to']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# bench


def _median(run: dict[str, Any] | None) -> float | None:
    return run["timing"]["median"] if run and run.get("timing") else None


def format_bench(data: dict[str, Any]) -> str:
    """`BenchResult.to_json()`: one row per runtime and thread count, then what failed or
    differs, and the context of the numbers."""
    runs = data["runs"]
    reference = {r["threads"]: _median(r) for r in runs if r["runtime"] == _REFERENCE}
    rows = []
    for run in sorted(runs, key=lambda r: (r["threads"], r["runtime"] != _REFERENCE)):
        median = _median(run)
        if median is None:
            rows.append([run["runtime"], run["threads"], "", "failed", "", "", "", "", "NO"])
            continue
        ort = reference.get(run["threads"])
        checks = run.get("checks", [])
        abs_err = max((float(c["max_abs_err"]) for c in checks), default=None)
        rel_err = max((float(c["max_rel_err"]) for c in checks), default=None)
        verified = "yes" if run["verified"] else "NO"
        if run["runtime"] == _REFERENCE and run["verified"]:
            verified = "reference"
        rows.append(
            [
                run["runtime"],
                run["threads"],
                run["threads_used"],
                f"{median * 1e3:.4g}",
                f"{run['timing']['spread'] * 100:.1f}",
                f"{ort / median:.2f}x" if ort else "-",
                _err(abs_err),
                _err(rel_err),
                verified,
            ]
        )
    versions = {k: data.get("versions", {}).get(k, "?") for k in ("tvm", "onnxruntime")}
    lines = [
        f"model:    {data['model']}",
        f"cpu:      {data['cpu']}",
        f"target:   {data['target']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        text_table(
            [
                "runtime",
                "threads",
                "busy",
                "median ms",
                "spread %",
                "vs ORT",
                "max abs err",
                "max rel err",
                "verified",
            ],
            rows,
            align="<>>>>>>><",
        ),
        "",
    ]
    for run in runs:
        where = f"{run['runtime']} x{run['threads']}"
        if run.get("error") is not None:
            lines.append(f"{where}: {run['error']}")
        for check in run.get("checks", []):
            if not check["ok"]:
                lines.append(
                    f"{where}: output '{check['name']}' differs from ORT's: "
                    f"{check['mismatched']:.1%} of elements beyond tolerance "
                    f"{check.get('note', '')}".rstrip()
                )
    setup = ", ".join(
        f"{r['runtime']} x{r['threads']} {r['setup_s']:.2f} s" for r in runs if r.get("timing")
    )
    lines.append(f"TVM default build: {data['compile_s']:.2f} s; setup: {setup}")
    source_checks = data.get("source_checks", [])
    if source_checks:
        worst = max(float(c["max_rel_err"]) for c in source_checks)
        state = "same" if all(c["ok"] for c in source_checks) else "DIFFERENT"
        lines.append(f"folded graph vs the model file (ORT): {state}, max rel err {worst:.2e}")
    elif data.get("source_check_note"):
        lines.append(f"folded graph vs the model file: {data['source_check_note']}")
    lines.append(
        f"median of {data['protocol']['repeat']} repeats; spread = IQR / median; vs ORT = ORT "
        "median / this median (> 1: faster); busy = OS threads that used CPU time; "
        f"rel err = abs err / max |ORT output|, tolerance {data['tolerance']:g}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# tune-tasks and measure


def format_tuned(data: dict[str, Any]) -> str:
    """`TunedModelReport.to_json()`: the per-task table, the kernels applied, and the model
    benchmark."""
    tasks = data["tasks"]
    lines = [
        f"model:    {data['model']}",
        f"plan:     {data['plan']}, {len(tasks)} tasks",
        f"device:   {data['device']} ({data['device_key']}), database {data['database']}",
    ]
    tuning = data.get("tuning")
    if tuning is not None:
        lines.append(
            f"tuning:   {tuning['trials_run']} trials this run ({tuning['trials_before']} "
            f"before, budget {tuning['budget']}), scheduler {tuning['scheduler']}, rounds of "
            f"{tuning['trials_per_round']}, cost model {tuning['cost_model'] or '-'}, "
            f"{tuning['wall_s']:.0f} s"
        )
    lines.append("")
    rows = []
    for t in tasks:
        best, untuned = t["best_seconds"], t["untuned_seconds"]
        failures = ", ".join(f"{k} {v}" for k, v in sorted(t["statuses"].items()) if k != "ok")
        rows.append(
            [
                t["name"],
                t["weight"],
                t["trials"],
                t["new_trials"],
                _ms(best),
                _ms(untuned),
                f"{untuned / best:.1f}x" if best and untuned else "-",
                failures,
            ]
        )
    lines.append(
        text_table(
            ["task", "weight", "trials", "new", "best ms", "untuned ms", "speedup", "failures"],
            rows,
            align="<>>>>>><",
        )
    )
    tuned_sum = sum(t["weight"] * t["best_seconds"] for t in tasks if t["best_seconds"])
    untuned_sum = sum(t["weight"] * t["untuned_seconds"] for t in tasks if t["untuned_seconds"])
    lines.append(
        f"kernels, sum of weight x latency: best {tuned_sum * 1e3:.4g} ms, untuned "
        f"{untuned_sum * 1e3:.4g} ms"
    )
    scheduled, untuned = data["kernels"]["scheduled"], data["kernels"]["untuned"]
    lines.append(
        f"tuned build: {len(scheduled)} of {len(scheduled) + len(untuned)} kernels got a record"
    )
    if untuned:
        shown = ", ".join(untuned[:6]) + (", ..." if len(untuned) > 6 else "")
        lines.append(f"  built untuned: {shown}")
    lines += [f"note: {note}" for note in data.get("notes", [])]
    if data.get("bench") is not None:
        lines += ["", format_bench(data["bench"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# train-cost-model, collect, remeasure


def format_cost_model_metrics(metrics: dict[str, Any]) -> str:
    """The metrics dict `train-cost-model` writes (metrics.json): the held-out models, then
    the GNN's and XGB's scores on them."""
    held = metrics.get("held_out_models") or []
    rows = []
    for name in ("gnn", "xgb"):
        row = metrics.get(name)
        if isinstance(row, dict):
            rows.append(
                [name]
                + [
                    f"{row[k]:.3f}" if isinstance(row.get(k), int | float) else "-"
                    for k in _COST_MODEL_METRICS
                ]
            )
    return "\n".join(
        [
            f"held-out models: {', '.join(held) if held else 'none (trained on every model)'}",
            text_table(
                ["model", *_COST_MODEL_METRICS],
                rows,
                align="<" + ">" * len(_COST_MODEL_METRICS),
            ),
        ]
    )


def format_collect(data: dict[str, Any]) -> str:
    """`CollectReport.to_json()`: the end-of-run summary of `collect`."""
    models_file, tasks_file = _LABEL_FILES
    head = [
        f"device {data['device_key']}: {len(data['models'])} models x {len(data['seeds'])} "
        f"seeds -> {data['tasks']} unique tasks ({data['multi_complex_tasks']} with several "
        "complex ops)",
        "tasks per seed: " + ", ".join(f"{s} {n}" for s, n in data["tasks_per_seed"].items()),
    ]
    if data["stopped"] == "labels only":
        lines = [
            *head,
            f"labels only: {models_file} and {tasks_file} written beside {data['export']}; "
            "nothing measured",
        ]
    else:
        lines = [
            *head,
            f"passes run: {data['passes']} (target {data['trials_per_task']} trials per task), "
            f"stopped: {data['stopped']}",
            f"records: {data['records_after']} in the database, {data['new_records']} new in "
            f"{data['wall_s']:.0f} s ({data['records_per_s']:.2f} records/s)",
            "by status: " + ", ".join(f"{s} {n}" for s, n in data["statuses"].items()),
            f"database: {data['database']}",
            f"export:   {data['export']} (+ {models_file}, {tasks_file})",
        ]
    if data["failed"]:
        lines.append("not collected: " + "; ".join(data["failed"]))
    return "\n".join(lines)


def format_remeasure(data: dict[str, Any]) -> str:
    """`RemeasureReport.to_json()`: the summary of `remeasure`."""
    ratio = data["median_ratio"]
    ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
    return (
        f"remeasured {data['remeasured']} records of {data['device_key']} in "
        f"{data['wall_s']:.0f} s ({data['stopped']}); tasks done "
        f"{data['tasks_done']}/{data['tasks']}; failed {data['failed']}; wrong results "
        f"{data['wrong_result']}; median new/recorded latency {ratio_text}; timings still "
        f"disturbed after retries {data['disturbed']}\n  database: {data['database']}"
    )


# ---------------------------------------------------------------------------------------
# search


def format_search(summary: dict[str, Any]) -> str:
    """What `ago-search MODEL --budget ...` prints at the end (from its summary.json)."""
    latency = summary.get("latency_s", {})
    ours = latency.get("ago_search")
    rows = []
    for label, key in (
        ("ONNX Runtime", "onnxruntime"),
        ("TVM default build", "tvm_default"),
        ("ago-search plan", "ago_search"),
    ):
        seconds = latency.get(key)
        if key == "tvm_default" and seconds is None:
            continue  # not timed (`--tvm-default`)
        ratio = f"{seconds / ours:.2f}x" if seconds and ours and key != "ago_search" else ""
        rows.append([label, _ms(seconds), ratio])
    lines = [f"model: {summary.get('model')}  device: {summary.get('device_key')}"]
    if summary.get("interrupted"):
        lines.append("stopped before the end: the best verified plan so far is kept")
    lines.append(text_table(["build", "latency (ms)", "ours is faster by"], rows))
    verified = summary.get("verified")
    lines.append(
        "verified against ONNX Runtime: "
        + ("yes" if verified else "NO: " + "; ".join(summary.get("errors", [])) or "not run")
    )
    untuned = summary.get("untuned_kernels") or []
    if untuned:
        lines.append(f"kernels without a tuning record: {len(untuned)}")
    spent, budget = summary.get("spent_s", 0.0), summary.get("budget_s", 0.0)
    lines.append(
        f"budget: {spent:.0f} of {budget:.0f} s; plans scored: {summary.get('plans_scored', 0)}; "
        f"measurements: {summary.get('measurements', 0)} "
        f"({summary.get('measurements_this_run', 0)} in this run)"
    )
    plan = summary.get("plan")
    if plan:
        layouts = ", ".join(f"{k} {v}" for k, v in sorted(plan.get("layouts", {}).items()))
        lines.append(
            f"plan: {plan.get('groups')} groups (layouts: {layouts}); layout transforms: "
            f"{plan.get('transforms', 0)} placed, {plan.get('transforms_cancelled', 0)} cancelled"
        )
    rho = summary.get("score_rank_correlation")
    measured = [e for e in summary.get("end_to_end", []) if e.get("measured_s")]
    lines.append(
        f"plans timed end to end: {len(measured)}; rank correlation of predicted and measured "
        f"latency: {rho:.2f}"
        if rho is not None
        else f"plans timed end to end: {len(measured)}"
    )
    outputs = summary.get("outputs", {})
    lines.append(
        f"written: {outputs.get('library')}, {outputs.get('plan')}, {outputs.get('database')}"
    )
    threads = summary.get("threads")
    if threads and outputs.get("library"):
        # TVM's thread pool takes half the logical CPUs on x86 unless told (1 on a 2-core VM:
        # ResNet-18's library ran 53.6 ms there against 34.5 with 2 threads)
        lines.append(
            f"run the library with TVM_NUM_THREADS={threads} (the threads it was timed with; "
            "TVM's default on x86 is half the logical CPUs)"
        )
    return "\n".join(lines)
