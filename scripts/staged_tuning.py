"""Does tuning a multi-complex group in stages help? Its parts first, then the whole group
starting from what the parts taught the cost model, against the whole group from a cold
start, at equal trials on the whole group.

    .venv/bin/python scripts/staged_tuning.py --models mobilenetv2,resnet18,squeezenet \
        --groups 6 --trials 32 --part-trials 16

The groups: the intensive seed's groups (cut to the search's limits and regions) with two or
more convs/matmuls, the largest first, up to --groups in all. A group's parts are its pieces in
TVM's fusion (the groups the search's other plans share). For each group, from an empty
database and a fresh cost model each:

- cold: the whole group's task tuned for --trials trials;
- staged: each part tuned for --part-trials trials, then the whole group for --trials trials
  with the same cost model object (MetaSchedule's UpdateCostModel trained it on every part's
  measurements).

Printed per group and as a geometric mean: the whole group's best latency, staged / cold
(below 1: the staged start helps), and the whole group against the sum of its parts tuned
alone (below 1: fusing them pays). One run each, side by side, on this machine: a comparison,
not a figure for another session. JSON in --json. Resumable per group (the JSON holds finished
groups; a rerun skips them).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ago_search.devices import detect_host  # noqa: E402
from ago_search.partition import Partition  # noqa: E402
from ago_search.pipeline import import_model, prepare_model, seed_partition  # noqa: E402
from ago_search.plan import fuse_groups  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tasks import extract_tasks  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from ago_search.search.regions import Regions  # noqa: E402
from ago_search.search.space import PlanSpace  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("staged_tuning")


def multi_complex_groups(
    prepared, limit: int
) -> list[tuple[tuple[str, ...], list[tuple[str, ...]]]]:
    """(the group's nodes, its parts' nodes) for the intensive seed's groups with two or more
    complex ops and two or more parts, largest first."""
    space = PlanSpace(prepared.graph)
    seeds = {n: seed_partition(prepared, n).partition for n in ("tvm", "dnnfusion", "intensive")}
    kept = [space.fit_to_limits(seeds[n]) for n in ("tvm", "dnnfusion")]
    regions = Regions.at_cut_points(space.index, kept)
    intensive: Partition = space.fit_to_limits(regions.cut(seeds["intensive"]))
    tvm: Partition = kept[0]
    index = space.index
    out = []
    for group in intensive.group_ids:
        members = intensive.groups[group]
        if intensive.group_stats(group).complex_ops < 2:
            continue
        part_ids = sorted({tvm.group_of(node) for node in members})
        parts = [
            tuple(sorted(members & tvm.groups[p], key=index.position.__getitem__)) for p in part_ids
        ]
        if len(parts) < 2:
            continue
        out.append((tuple(sorted(members, key=index.position.__getitem__)), parts))
    out.sort(key=lambda item: -len(item[0]))
    return out[:limit]


def tasks_of(prepared, groups):
    mod, names = fuse_groups(prepared.legalized, prepared.graph, groups, prepared.target)
    by_name = {n: t for t in extract_tasks(mod, prepared.target) for n in t.groups}
    return [by_name.get(name) if name is not None else None for name in names]


def best(session: TuningSession, task) -> float | None:
    records = session.store.best(task.key, session.device.key)
    return records[0].median if records else None


def run_group(prepared, host, group, parts, args) -> dict:
    whole, *part_tasks = tasks_of(prepared, [group, *parts])
    part_tasks = [t for t in part_tasks if t is not None]
    if whole is None or not part_tasks:
        raise ValueError("the group or its parts make no kernel")
    row: dict = {"nodes": len(group), "parts": len(part_tasks), "task": whole.name}
    for arm in ("cold", "staged"):
        with tempfile.TemporaryDirectory() as tmp:
            config = TuningConfig(
                trials=0,
                measure_untuned=False,
                trials_per_round=args.round,
                seed=args.seed,
            )
            with TuningSession(host, Path(tmp) / "tuning.db", config) as session:
                model = make_cost_model(args.cost_model, seed=args.seed)
                started = time.perf_counter()
                if arm == "staged":
                    unique = {t.key: t for t in part_tasks}
                    session.tune(
                        list(unique.values()),
                        TuningConfig(
                            trials=args.part_trials * len(unique),
                            measure_untuned=False,
                            trials_per_round=args.round,
                            seed=args.seed,
                        ),
                        cost_model=model,
                    )
                    bests = [best(session, t) for t in part_tasks]
                    row["parts_sum_s"] = sum(bests) if all(b is not None for b in bests) else None
                session.tune(
                    [whole],
                    TuningConfig(
                        trials=args.trials,
                        measure_untuned=False,
                        trials_per_round=args.round,
                        seed=args.seed,
                    ),
                    cost_model=model,
                )
                row[f"{arm}_s"] = best(session, whole)
                row[f"{arm}_wall_s"] = time.perf_counter() - started
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenetv2,resnet18,squeezenet")
    parser.add_argument("--groups", type=int, default=6, help="groups in all")
    parser.add_argument("--trials", type=int, default=32, help="trials on the whole group")
    parser.add_argument("--part-trials", type=int, default=16)
    parser.add_argument("--round", type=int, default=8)
    parser.add_argument("--cost-model", default="gnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "results" / "staged_tuning.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("ago_search", "cost_model"):
        logging.getLogger(name).setLevel(logging.WARNING)

    done = json.loads(args.json.read_text()) if args.json.exists() else {"groups": []}
    finished = {(g["model"], g["index"]) for g in done["groups"]}
    manifest = json.loads((REPO / "datasets" / "zoo" / "manifest.json").read_text())["models"]
    host = detect_host()
    models = args.models.split(",")
    per_model = max(1, math.ceil(args.groups / len(models)))
    for model in models:
        entry = manifest[model]
        imported = import_model(REPO / "datasets" / "zoo" / entry["file"], entry["inputs"])
        prepared = prepare_model(imported, host.tvm_target())
        for i, (group, parts) in enumerate(multi_complex_groups(prepared, per_model)):
            if (model, i) in finished:
                continue
            log.info("%s group %d: %d nodes, %d parts", model, i, len(group), len(parts))
            try:
                row = run_group(prepared, host, group, parts, args)
            except Exception as exc:  # one group failing does not end the experiment
                log.exception("%s group %d failed", model, i)
                row = {"error": str(exc)}
            done["groups"].append({"model": model, "index": i, **row})
            args.json.write_text(json.dumps({**done, "device": host.key}, indent=1))
            log.info("%s", row)
    rows = [g for g in done["groups"] if g.get("cold_s") and g.get("staged_s")]
    print(
        f"{'model':12} {'group':>5} {'nodes':>5} {'parts':>5} {'cold ms':>8} {'staged ms':>9} "
        f"{'staged/cold':>11} {'whole/parts':>11}"
    )
    for g in rows:
        parts = g.get("parts_sum_s")
        print(
            f"{g['model']:12} {g['index']:>5} {g['nodes']:>5} {g['parts']:>5} "
            f"{g['cold_s'] * 1e3:8.4f} {g['staged_s'] * 1e3:9.4f} "
            f"{g['staged_s'] / g['cold_s']:11.3f} "
            f"{(g['staged_s'] / parts) if parts else float('nan'):11.3f}"
        )
    if rows:
        geo = math.exp(sum(math.log(g["staged_s"] / g["cold_s"]) for g in rows) / len(rows))
        print(f"geometric mean staged/cold over {len(rows)} groups: {geo:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
