"""Where a plan's score and its end-to-end time part: every kernel timed inside the model and
alone, side by side in one run.

    .venv/bin/python scripts/score_gap.py OUT [--runs 30] [--cold] [--json PATH]

OUT is a search's output folder (`search-state.json`, `plan.json`, `tuning.db`). The plan is
built with its best records (as the search's finish builds it), and then:

- "in model": the model run `--runs` times with the Relax VM's instrument hook around every
  call (`VMRunner.kernel_times`, what the search's end-to-end timings do too); each kernel's
  time is the median over the runs of its calls' wall time, less the hook's own cost;
- "end to end": the same executable timed without the hook (median of `--runs` runs after
  warm-up): what the search's end-to-end timings measure;
- "score": each task's best record in `tuning.db` (`TUNING_PROTOCOL`: warm caches, `number`
  calibrated to 20 ms), x its calls (the build merges a task's identical kernels into one
  function, which the VM's profile times for all of them): what the plan's score sums;
- with `--cold`: each task's best schedule built again and timed with every argument but the
  first (the weights and the output; the first input, usually the activation the kernel before
  just wrote, stays) evicted from the caches before every call (number = 1, TVM's
  `cache_flush_cpu_non_first_arg`): a kernel as the model runs it, its weights out of cache.

Printed: the totals (score, cold, kernels in model, end to end) and their ratios, and per kernel
(heaviest first) in-model / score. Where the in-model kernels add up to the end-to-end time,
the gap is the kernels' (their caches, their threads); where they do not, it is between them
(the VM, allocation, launches). Run with the machine alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

log = logging.getLogger("score_gap")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a search's output folder")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold", action="store_true", help="also time each kernel alone, cold")
    parser.add_argument("--threads", type=int, default=None, help="default: the host's")
    parser.add_argument("--top", type=int, default=15, help="kernels printed")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> int:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from ago_search.devices import detect_host
    from ago_search.measure.threads import tvm_thread_env

    host = detect_host()
    threads = args.threads or host.threads
    os.environ.update(tvm_thread_env(threads))  # before TVM's pool exists

    from search_outputs import build_search_output

    from ago_search.build import VMRunner
    from ago_search.frontend import random_inputs
    from ago_search.measure.lease import host_cpu_lease

    out = args.out
    search = build_search_output(out, host)
    imported, planned, store, tuned = search.imported, search.planned, search.store, search.tuned
    # call-site name -> its task
    task_of = {name: task for task in planned.tasks for name in task.groups}
    device_key = search.device_key
    feeds = random_inputs(imported.inputs, seed=0)
    inputs = [feeds[s.name] for s in imported.inputs]

    runner = VMRunner(tuned.executable, inputs)
    with host_cpu_lease().exclusive():
        for _ in range(3):
            runner()
        wall = []
        for _ in range(args.runs):
            begin = time.perf_counter()
            runner()
            wall.append(time.perf_counter() - begin)
        in_model = runner.kernel_times(args.runs)
    end_to_end = statistics.median(wall)
    symbols = sorted(in_model)
    kernels = {s: t for s, t in in_model.items() if s in task_of}
    other = {s: t for s, t in in_model.items() if s not in task_of}
    if not kernels:
        log.error("no VM call matched a kernel of the plan; calls seen: %s", symbols[:20])
        return 1

    cold: dict[str, float] = (
        _cold_times(store, host, device_key, planned.tasks) if args.cold else {}
    )
    rows = []
    for symbol, seconds in sorted(kernels.items(), key=lambda item: -item[1]):
        task = task_of[symbol]
        best = store.best(task.key, device_key)
        # the build merges a task's identical kernels into one function (named after its
        # first group) whose time holds all the task's calls
        alone = best[0].median * task.weight if best else None
        rows.append(
            {
                "kernel": symbol,
                "task": task.key,
                "in_model_ms": seconds * 1e3,
                "score_ms": alone * 1e3 if alone is not None else None,
                "cold_ms": cold[task.key] * task.weight * 1e3 if task.key in cold else None,
                "ratio": seconds / alone if alone else None,
            }
        )
    score = sum(r["score_ms"] for r in rows if r["score_ms"] is not None)
    totals = {
        "end_to_end_ms": end_to_end * 1e3,
        "kernels_in_model_ms": sum(kernels.values()) * 1e3,
        "other_calls_in_model_ms": sum(other.values()) * 1e3,
        "score_ms": score,
        "cold_ms": sum(r["cold_ms"] for r in rows if r["cold_ms"] is not None) if cold else None,
        "untuned_kernels": list(tuned.untuned),
        "kernels": len(rows),
        "threads": threads,
    }
    print(f"plan {out / 'plan.json'}: {len(rows)} kernels, {threads} threads, {host.key}")
    print(
        f"end to end {totals['end_to_end_ms']:.3f} ms | kernels in the model "
        f"{totals['kernels_in_model_ms']:.3f} ms + other VM calls "
        f"{totals['other_calls_in_model_ms']:.3f} ms | score (kernels alone, warm) "
        f"{score:.3f} ms" + (f" | alone, cold {totals['cold_ms']:.3f} ms" if cold else "")
    )
    if score:
        print(
            f"end to end / score {end_to_end * 1e3 / score:.2f}; kernels in model / score "
            f"{totals['kernels_in_model_ms'] / score:.2f}"
        )
    print(f"{'kernel':50s} {'in model':>9s} {'alone':>9s} {'cold':>9s} {'ratio':>6s}")
    for row in rows[: args.top]:
        print(
            f"{row['kernel'][:50]:50s} {row['in_model_ms']:9.4f} "
            f"{_fmt(row['score_ms'])} {_fmt(row['cold_ms'])} "
            f"{row['ratio']:6.2f}"
            if row["ratio"]
            else f"{row['kernel'][:50]:50s} {row['in_model_ms']:9.4f}  (untuned)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"totals": totals, "kernels": rows}, indent=1) + "\n")
    store.close()
    return 0


def _fmt(value: float | None) -> str:
    return f"{value:9.4f}" if value is not None else f"{'-':>9s}"


def _cold_times(store, host, device_key, tasks) -> dict[str, float]:  # noqa: ANN001
    """Each task's best schedule timed alone with its inputs evicted before every call."""
    import shutil

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from ago_search.measure import LocalBuilder, MeasureProtocol, SubprocessRunner
    from cost_model.features import replay_trace

    protocol = MeasureProtocol(warmup=1, number=1, repeat=30, flush_cache=True)
    builder = LocalBuilder.for_device(host)
    runner = SubprocessRunner(host, protocol=protocol)
    times: dict[str, float] = {}
    try:
        for task in tasks:
            best = store.best(task.key, device_key)
            workload = store.workload(task.key)
            if not best or workload is None:
                continue
            target = tvm.target.Target(json.loads(best[0].target))
            mod = replay_trace(workload, best[0].trace_json).mod
            (built,) = builder.build([BuilderInput(mod, target)])
            if built.error_msg is not None:
                log.warning("%s: build failed: %s", task.name, built.error_msg.splitlines()[0])
                continue
            args_info = ms.arg_info.ArgInfo.from_prim_func(workload["main"])
            measured = runner.measure_input(
                RunnerInput(str(built.artifact_path), "llvm", args_info)
            )
            if measured.ok:
                times[task.key] = measured.median
            shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
    finally:
        builder.close()
        runner.close()
    return times


if __name__ == "__main__":
    raise SystemExit(main())
