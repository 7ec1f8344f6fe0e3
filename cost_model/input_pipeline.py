"""Records to graphs to padded batches.

`load_dataset` reads datasets/ trace files (a file or a folder of `*.jsonl.gz`), keeps the ok
records, replays each trace on its task's workload and featurises it (`features.Featurizer`),
and groups candidates by task: `TaskSamples`. Each task carries the names of the models it
belongs to, which the held-out-model split needs. Where they come from, first found wins:

1. a mapping passed in (`model_labels`: task_key -> model names), e.g. read from a
   `models.json` beside the trace files ({"task_key": ["model", ...]});
2. the records' `extra["models"]` (a list) or `extra["model"]` (a string);
3. the task name "<model>/<group>" (what `smoke_data` writes);
4. otherwise "unknown".

`training_batches` draws batches of a few tasks with several candidates each (the ranking
loss compares candidates of the same task), padded to fixed sizes.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cost_model.features import (
    CandidateGraph,
    FeatureStats,
    GraphBatch,
    OpInfo,
    bucket_size,
    pad_batch,
)

__all__ = [
    "Batch",
    "Dataset",
    "TaskSamples",
    "load_dataset",
    "model_of_task_name",
    "remeasure_disturbed",
    "split_by_models",
    "split_by_tasks",
    "trace_files",
    "training_batches",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSamples:
    """The measured candidates of one task.

    latencies: median seconds of each candidate; traces: their trace JSON text (the XGB
    baseline replays them); weight: how much the task counts in the metrics (its calls per
    inference, 1 when unknown).
    """

    task_key: str
    name: str | None
    models: tuple[str, ...]
    weight: float
    graphs: tuple[CandidateGraph, ...]
    latencies: np.ndarray
    traces: tuple[str, ...] = field(repr=False)
    workload: Any = field(default=None, repr=False, compare=False)

    @property
    def log_latencies(self) -> np.ndarray:
        return np.log(self.latencies)

    def __len__(self) -> int:
        return len(self.graphs)


@dataclass(frozen=True)
class Dataset:
    tasks: tuple[TaskSamples, ...]
    target: str | None = None

    @property
    def models(self) -> list[str]:
        return sorted({m for t in self.tasks for m in t.models})

    def __len__(self) -> int:
        return sum(len(t) for t in self.tasks)

    def all_graphs(self) -> list[CandidateGraph]:
        return [g for t in self.tasks for g in t.graphs]


class Batch:
    """One training batch: padded graphs, normalised targets and task ids per graph."""

    __slots__ = ("graphs", "task", "y")

    def __init__(self, graphs: GraphBatch, y: np.ndarray, task: np.ndarray) -> None:
        self.graphs, self.y, self.task = graphs, y, task


def model_of_task_name(name: str | None) -> tuple[str, ...]:
    if name and "/" in name:
        return (name.split("/", 1)[0],)
    return ()


def trace_files(path: Path) -> list[Path]:
    """The trace files of a folder (*.jsonl.gz, *.jsonl), or the file itself."""
    if path.is_dir():
        files = sorted([*path.glob("*.jsonl.gz"), *path.glob("*.jsonl")])
        if not files:
            raise FileNotFoundError(f"no *.jsonl.gz trace files in {path}")
        return files
    return [path]


def _task_info(paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """tasks.json of the folders among `paths` (what `ago-search collect` writes), merged."""
    info: dict[str, dict[str, Any]] = {}
    for p in paths:
        side = Path(p) / "tasks.json"
        if Path(p).is_dir() and side.exists():
            info.update(json.loads(side.read_text()))
    return info


def _ops_of(info: Mapping[str, Any] | None) -> tuple[list[OpInfo], list[tuple[int, int]]]:
    if not info or not info.get("ops"):
        return [], []
    ops = [OpInfo.from_json(op) for op in info["ops"]]
    edges = [(int(a), int(b)) for a, b in info.get("op_edges", ())]
    return ops, edges


def _label_rank(line: Mapping[str, Any]) -> float | None:
    """When a record's label was re-measured (its measured_at), None if never."""
    if "remeasured" not in (line.get("extra") or {}):
        return None
    return float(line.get("measured_at") or 0.0)


# A re-measured timing whose process got less than this share of its CPU time (another
# process ran beside it through every retry: ago_search.measure.runner) is too long.
MIN_CPU_SHARE = 0.9


# When the measurement fix landed (2026-11-21 16:48 UTC, commit 919bb65: checked runs no
# longer leak TVM pool threads that ran beside later timings). A record measured after it has
# a clean label of its own, like a re-measured one.
MEASUREMENT_FIX_AT = 1795279680.0


def clean_label(line: Mapping[str, Any]) -> bool:
    """Whether a record's label can be trusted: re-measured (`ago-search remeasure`) without
    disturbance, or measured after the measurement fix (`MEASUREMENT_FIX_AT`)."""
    if _label_rank(line) is not None:
        return not remeasure_disturbed(line)
    return float(line.get("measured_at") or 0.0) >= MEASUREMENT_FIX_AT


def remeasure_disturbed(line: Mapping[str, Any]) -> bool:
    """Whether a re-measured record has a round timed while other processes ran."""
    shares = ((line.get("extra") or {}).get("remeasured") or {}).get("cpu_share") or []
    return any(share < MIN_CPU_SHARE for share in shares)


def load_dataset(
    source: str | Path | Sequence[str | Path],
    device_key: str | None = None,
    model_labels: Mapping[str, Sequence[str]] | None = None,
    task_weights: Mapping[str, float] | None = None,
    max_per_task: int | None = None,
    featurizer: Any = None,
    cache: Any = None,
    with_ops: bool = True,
    remeasured_only: bool = False,
) -> Dataset:
    """Trace files (or folders of them) as a `Dataset` of featurised ok records.

    A schedule found in several records gets one label: a re-measured one
    (`ago-search remeasure`) over any other, else the first file's. remeasured_only: keep only
    schedules with a clean label (`clean_label`): re-measured, and not disturbed by other
    processes then (a round's CPU share below MIN_CPU_SHARE after every retry), or measured
    after the measurement fix of 2026-11-21 (labels of traces timed on a busy machine, or
    before it, are noisy: README, "Cost model").

    Beside a folder, `models.json` labels tasks with models and `tasks.json` gives each task's
    weight (its calls per inference, summed over its models) and operators (op nodes of the
    graphs; `with_ops=False` leaves them out). cache: a `FeatureCache`, a folder for one, None
    for the default folder, or False for none.
    """
    import tvm

    from ago_search.database import read_jsonl
    from ago_search.measure.lease import host_cpu_lease
    from cost_model.feature_cache import FeatureCache, cache_tag
    from cost_model.features import Featurizer

    paths = [source] if isinstance(source, str | Path) else list(source)
    files = [f for p in paths for f in trace_files(Path(p))]
    labels = dict(model_labels or {})
    for p in paths:
        side = Path(p) / "models.json" if Path(p).is_dir() else None
        if side is not None and side.exists():
            labels = {**json.loads(side.read_text()), **labels}
    info = _task_info(paths)
    weights = {
        key: float(sum(value.get("weights", {}).values()))
        for key, value in info.items()
        if value.get("weights")
    }
    weights.update(task_weights or {})
    lease = host_cpu_lease()
    if cache is False:
        store = None
    elif isinstance(cache, FeatureCache):
        store = cache
    else:
        store = FeatureCache(cache)
    task_lines: dict[str, dict[str, Any]] = {}
    # one label per schedule: a re-measured record (`ago_search.remeasure`) over one that is
    # not, the latest re-measurement over older ones, else the first file's
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    dropped: set[tuple[str, str]] = set()
    for file in files:
        for line in read_jsonl(file):
            if line["kind"] == "task":
                task_lines.setdefault(line["task_key"], line)
            elif line["kind"] == "record":
                if device_key is not None and line["device_key"] != device_key:
                    continue
                ident = (line["task_key"], line["trace_hash"])
                rank = _label_rank(line)
                if line["status"] != "ok" or not line.get("median"):
                    if rank is not None:  # re-measured as wrong: never a label again
                        dropped.add(ident)
                    continue
                held = chosen.get(ident)
                if held is None or (rank is not None and rank > (_label_rank(held) or -1.0)):
                    chosen[ident] = line
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ident, line in chosen.items():
        if ident in dropped:
            continue
        if remeasured_only and not clean_label(line):
            continue
        records[ident[0]].append(line)
    tasks = []
    target = None
    for key in sorted(records):
        task = task_lines.get(key)
        if task is None or not task.get("workload"):
            log.warning("task %s has no workload in the trace files: skipped", key)
            continue
        target_text = json.dumps(task["target"], sort_keys=True)
        target = target or target_text
        lines = records[key][:max_per_task] if max_per_task else records[key]
        workload = tvm.ir.load_json(task["workload"]["mod"])
        traces = [json.dumps(r["trace"]) for r in lines]
        hashes = [r["trace_hash"] for r in lines]
        tag = cache_tag(target_text)
        known = store.load(key, tag) if store is not None else {}
        missing = [i for i, h in enumerate(hashes) if h not in known]
        if missing:
            if featurizer is None:
                featurizer = Featurizer(task["target"])
            with lease.shared():  # never while a measurement runs on this machine
                new_parts = featurizer.parts_from_traces(workload, [traces[i] for i in missing])
            known = {**known, **{hashes[i]: p for i, p in zip(missing, new_parts, strict=True)}}
            if store is not None:
                store.save(key, tag, known)
        ops, op_edges = _ops_of(info.get(key)) if with_ops else ([], [])
        graphs = [known[h].graph(ops, op_edges) if known[h] is not None else None for h in hashes]
        keep = [i for i, g in enumerate(graphs) if g is not None]
        if len(keep) < 2:
            continue
        extra = lines[0].get("extra") or {}
        models = tuple(labels.get(key, ()))
        models = models or tuple(extra.get("models") or ())
        models = models or ((extra["model"],) if extra.get("model") else ())
        models = models or model_of_task_name(task.get("name")) or ("unknown",)
        tasks.append(
            TaskSamples(
                task_key=key,
                name=task.get("name"),
                models=models,
                weight=weights.get(key, 1.0),
                graphs=tuple(graphs[i] for i in keep),
                latencies=np.asarray([lines[i]["median"] for i in keep], np.float64),
                traces=tuple(traces[i] for i in keep),
                workload=workload,
            )
        )
        log.info("task %s (%s): %d candidates", key, task.get("name"), len(keep))
    return Dataset(tuple(tasks), target)


def split_by_models(dataset: Dataset, held_out: Sequence[str]) -> tuple[Dataset, Dataset]:
    """(train, test): test holds every task of a held-out model, train the tasks of no
    held-out model (a task shared with a held-out model is never trained on)."""
    out = set(held_out)
    test = tuple(t for t in dataset.tasks if out & set(t.models))
    train = tuple(t for t in dataset.tasks if not out & set(t.models))
    return Dataset(train, dataset.target), Dataset(test, dataset.target)


def split_by_tasks(dataset: Dataset, held_out: Sequence[str]) -> tuple[Dataset, Dataset]:
    """(train, test) by task key."""
    out = set(held_out)
    test = tuple(t for t in dataset.tasks if t.task_key in out)
    train = tuple(t for t in dataset.tasks if t.task_key not in out)
    return Dataset(train, dataset.target), Dataset(test, dataset.target)


@dataclass(frozen=True)
class TargetStats:
    """Mean and standard deviation of log latency (seconds) over the training records."""

    mean: float
    std: float

    @classmethod
    def fit(cls, dataset: Dataset) -> TargetStats:
        y = np.concatenate([t.log_latencies for t in dataset.tasks])
        return cls(float(y.mean()), float(max(y.std(), 1e-3)))

    def normalise(self, log_latency: np.ndarray) -> np.ndarray:
        return ((log_latency - self.mean) / self.std).astype(np.float32)

    def denormalise(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, np.float64) * self.std + self.mean


def normalise_dataset(dataset: Dataset, stats: FeatureStats) -> Dataset:
    """The dataset with every graph standardised by `stats`."""
    tasks = tuple(
        TaskSamples(
            task_key=t.task_key,
            name=t.name,
            models=t.models,
            weight=t.weight,
            graphs=tuple(stats.apply(g) for g in t.graphs),
            latencies=t.latencies,
            traces=t.traces,
            workload=t.workload,
        )
        for t in dataset.tasks
    )
    return Dataset(tasks, dataset.target)


def padded_sizes(graphs: Sequence[CandidateGraph], n_graph: int) -> tuple[int, int, int]:
    """Bucketed (nodes, edges, graphs) padding for up to `n_graph` graphs like these."""
    nodes = sum(g.n_node for g in graphs) + 1
    edges = sum(g.n_edge for g in graphs)
    return bucket_size(nodes), bucket_size(edges), n_graph + 1


def training_batches(
    dataset: Dataset,
    target_stats: TargetStats,
    rng: np.random.Generator,
    tasks_per_batch: int,
    candidates_per_task: int,
) -> Iterator[Batch]:
    """An endless stream of batches: `tasks_per_batch` tasks drawn with probability by size,
    `candidates_per_task` candidates of each (fewer when a task has fewer)."""
    sizes = np.asarray([len(t) for t in dataset.tasks], np.float64)
    probs = sizes / sizes.sum()
    n_graph = tasks_per_batch * candidates_per_task
    replace = len(dataset.tasks) < tasks_per_batch
    # Few padded shapes (a jitted step compiles once per shape): a floor that twice the
    # 90th-percentile graph fills n_graph times over, so that most batches share it; rarer
    # batches of large graphs take the next powers of two.
    graphs_all = dataset.all_graphs()
    floor_nodes = bucket_size(int(2 * n_graph * np.percentile([g.n_node for g in graphs_all], 90)))
    floor_edges = bucket_size(int(2 * n_graph * np.percentile([g.n_edge for g in graphs_all], 90)))
    while True:
        chosen = rng.choice(len(dataset.tasks), tasks_per_batch, replace=replace, p=probs)
        graphs, ys, tids = [], [], []
        for tid in chosen:
            task = dataset.tasks[tid]
            take = min(candidates_per_task, len(task))
            idx = rng.choice(len(task), take, replace=False)
            graphs += [task.graphs[i] for i in idx]
            ys.append(target_stats.normalise(task.log_latencies[idx]))
            tids += [int(tid)] * take
        n_node_pad, n_edge_pad, n_graph_pad = padded_sizes(graphs, n_graph)
        n_node_pad, n_edge_pad = max(n_node_pad, floor_nodes), max(n_edge_pad, floor_edges)
        y = np.zeros(n_graph_pad, np.float32)
        y[: len(graphs)] = np.concatenate(ys)
        task = np.full(n_graph_pad, -1, np.int32)
        task[: len(graphs)] = tids
        yield Batch(pad_batch(graphs, n_node_pad, n_edge_pad, n_graph_pad), y, task)


def inference_batches(
    graphs: Sequence[CandidateGraph], batch_size: int = 256
) -> Iterator[tuple[GraphBatch, int]]:
    """Padded batches of `graphs` in order, with how many real graphs each holds."""
    for start in range(0, len(graphs), batch_size):
        chunk = graphs[start : start + batch_size]
        # generous minimum buckets: a task's candidates or a tuning round's population
        # (up to a few hundred small graphs) share one shape, so the model compiles once
        n_graph = bucket_size(len(chunk), minimum=256)
        nodes, edges, _ = padded_sizes(chunk, n_graph)
        yield (
            pad_batch(chunk, max(nodes, 4096), max(edges, 8192), n_graph + 1),
            len(chunk),
        )


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(float(np.mean(np.log(values))))
