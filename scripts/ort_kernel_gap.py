"""Where a search's plan and ONNX Runtime part, by kind of conv: each side's kernels timed
inside its own model, in alternating blocks in one process.

    .venv/bin/python scripts/ort_kernel_gap.py OUT MODEL.onnx [--blocks 4] [--runs 60] [--json P]

OUT is a search's output folder (`plan.json`, `tuning.db`); its plan is built with its best
records, as the search's finish builds it. Then, `--blocks` times in turn (the machine's load
comes and goes: each side's figure is the fastest of its blocks):

- ORT (all graph optimisations, the host's threads) with its profiler on: each node's kernel
  time, the median over the block's `--runs` runs;
- the plan in the Relax VM with its instrument hook (`VMRunner.kernel_times`): each kernel's
  time per inference, over `--runs` runs;
- both end to end without profiling (median of 50 runs each).

Kernels are put in kinds by the model's convs: a conv is "dw" (groups == channels), "1x1" or
"KxK"; ORT's fused Conv nodes are matched to the model's Conv nodes in order, the plan's
kernels by the conv of their group (`ago_gN_...` is the N-th group; a plan whose groups hold one
conv each, in the model's order, as TVM's fusion of MobileNetV2 does; the build merges a task's
identical kernels into the first group's function, which holds all their calls, of one kind).
Anything else is "other" (Gemm/matmul, pooling, transforms). Printed: per kind, ORT's sum and
the plan's, and both end-to-end medians. A diagnostic, one run: ORT's profiler slows every node
down (its nodes summed 6.27 ms against 4.54 ms end to end in one MobileNetV2 run, 4.98 against
4.79 in the next), so its kinds are also shown scaled to its end-to-end time, which assumes the
slowdown is even. Run with the machine alone.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))


def _conv_kinds(model) -> list[str]:  # noqa: ANN001
    """The kind of each Conv node of the ONNX model, in graph order."""
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    kinds = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: a for a in node.attribute}
        group = attrs["group"].i if "group" in attrs else 1
        shape = weights.get(node.input[1], [0, 0, 0, 0])
        if group > 1 and shape[1] == 1:
            kinds.append("dw")
        elif shape[2:] == [1, 1]:
            kinds.append("1x1")
        else:
            kinds.append(f"{shape[2]}x{shape[3]}")
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from ago_search.devices import detect_host
    from ago_search.measure.threads import tvm_thread_env

    host = detect_host()
    os.environ.update(tvm_thread_env(host.threads))  # before TVM's pool exists

    import numpy as np
    import onnx
    import onnxruntime as ort
    from search_outputs import build_search_output

    from ago_search.build import VMRunner
    from ago_search.frontend import random_inputs
    from ago_search.measure.lease import host_cpu_lease

    search = build_search_output(args.out, host)
    feeds = random_inputs(search.imported.inputs, seed=0)
    inputs = [feeds[s.name] for s in search.imported.inputs]
    runner = VMRunner(search.tuned.executable, inputs)
    model_path = str(args.model)

    profiles = tempfile.mkdtemp(prefix="ago-ort-profile-")

    def session(profile: bool):
        options = ort.SessionOptions()
        options.intra_op_num_threads = host.threads
        options.enable_profiling = profile
        options.profile_file_prefix = str(Path(profiles) / "ort")
        return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    profiled, plain = session(True), session(False)
    ort_feeds = {n: feeds[n] for n in (i.name for i in plain.get_inputs())}

    def median_s(fn, runs: int) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(runs):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return float(np.median(times))

    ours_best: dict[str, float] = {}
    e2e = {"onnxruntime": [], "ago-search": []}
    with host_cpu_lease().exclusive():
        for _ in range(args.blocks):
            for _ in range(args.runs):
                profiled.run(None, ort_feeds)
            time.sleep(0.3)
            for _ in range(5):
                runner()
            for name, seconds in runner.kernel_times(args.runs).items():
                ours_best[name] = min(ours_best.get(name, np.inf), seconds)
            time.sleep(0.3)
            e2e["onnxruntime"].append(median_s(lambda: plain.run(None, ort_feeds), 50))
            time.sleep(0.3)
            e2e["ago-search"].append(median_s(runner, 50))
            time.sleep(0.3)
    trace = json.loads(Path(profiled.end_profiling()).read_text())
    shutil.rmtree(profiles, ignore_errors=True)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    order: list[str] = []
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            per_node[name].append(event["dur"] * 1e-6)
            if name not in op_of:
                order.append(name)
                op_of[name] = event["args"].get("op_name", "")
    ort_best: dict[str, float] = {}
    for name in order:
        samples = per_node[name]
        blocks = [samples[i : i + args.runs] for i in range(0, len(samples), args.runs)]
        ort_best[name] = min(float(np.median(b)) for b in blocks if b)

    kinds = _conv_kinds(onnx.load(model_path, load_external_data=False))
    ort_convs = [n for n in order if op_of[n] in ("Conv", "FusedConv")]
    table: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for name in order:
        kind = kinds[ort_convs.index(name)] if name in ort_convs else "other"
        table[kind][0] += ort_best[name]
    for name, seconds in ours_best.items():
        match = re.match(r"ago_g(\d+)_", name)
        index = int(match.group(1)) if match else -1
        kind = kinds[index] if match and "conv2d" in name and index < len(kinds) else "other"
        table[kind][1] += seconds
    ends = {k: min(v) * 1e3 for k, v in e2e.items()}
    ort_sum = sum(v[0] for v in table.values())
    # ORT's profiler slows every node down (6.27 ms of nodes against 4.54 ms end to end in one
    # MobileNetV2 run, 4.98 against 4.79 in another): its kinds also scaled to its end to end
    scale = ends["onnxruntime"] / (ort_sum * 1e3) if ort_sum else 1.0
    print(
        f"{args.out}: ORT's kernels vs the plan's, inside their models (fastest of {args.blocks})"
    )
    print(f"{'kind':8s} {'ORT ms':>8s} {'scaled':>8s} {'plan ms':>8s} {'scaled/plan':>12s}")
    rows = {}
    for kind in sorted(table, key=lambda k: -table[k][0]):
        ort_s, ours_s = table[kind]
        rows[kind] = {
            "onnxruntime_ms": ort_s * 1e3,
            "onnxruntime_scaled_ms": ort_s * scale * 1e3,
            "ago_search_ms": ours_s * 1e3,
        }
        ratio = f"{ort_s * scale / ours_s:11.2f}x" if ours_s else f"{'-':>12s}"
        print(
            f"{kind:8s} {ort_s * 1e3:8.3f} {ort_s * scale * 1e3:8.3f} {ours_s * 1e3:8.3f} {ratio}"
        )
    ours_sum = sum(v[1] for v in table.values())
    print(f"{'sum':8s} {ort_sum * 1e3:8.3f} {ort_sum * scale * 1e3:8.3f} {ours_sum * 1e3:8.3f}")
    print(
        f"end to end (fastest block's median): ORT {ends['onnxruntime']:.3f} ms, plan "
        f"{ends['ago-search']:.3f} ms ({ends['onnxruntime'] / ends['ago-search']:.2f}x)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"kinds": rows, "end_to_end_ms": ends, "blocks": e2e}, indent=1) + "\n"
        )
    search.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
