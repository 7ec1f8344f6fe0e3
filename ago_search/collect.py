"""Trace collection for the cost model (`ago-search collect`).

`collect(models, device, db, out)` turns zoo models into device traces:

1. every model is imported, prepared and partitioned with each seed plan (tvm, dnnfusion,
   intensive: the last gives groups with several complex ops), and its tasks are extracted;
   tasks with the same key (same workload, same target) are one task, whatever model or seed
   they came from;
2. the unique tasks are tuned in passes, in batches of a few tasks: pass 1 brings each task
   to `first_trials` search trials with the random cost model (random samples of
   MetaSchedule's design space, ReplayTrace), later passes raise the per-task target by
   `step_trials` with the XGBoost model (evolutionary search), until `trials_per_task` or the
   time budget; each pass gives every task one round of its step, tasks in turn;
3. after each batch the database is exported to `<out>/<db stem>.jsonl.gz` (written whole,
   then renamed); `models.json` (task_key -> [model names], what
   `cost_model.input_pipeline.load_dataset` reads) and `tasks.json` (task_key -> {"models",
   "weights": {model: calls per inference}, "seeds", "name", "flops", "complex_ops", "ops":
   the group's operators as `cost_model.features.OpInfo` JSON, "op_edges": their edges as
   index pairs}) are written beside it before tuning starts.

Everything measured is in the database at once, and `tune_tasks` counts the database's trials
towards its budget and never re-measures a known schedule: a killed run started again with the
same arguments measures only what is missing, and a finished one measures nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ago_search.errors import AgoSearchError

__all__ = [
    "DEFAULT_ZOO",
    "CollectReport",
    "ModelSource",
    "collect",
    "gather_tasks",
    "load_task_weights",
    "pass_targets",
    "resolve_models",
]

log = logging.getLogger(__name__)

DEFAULT_ZOO = Path(__file__).resolve().parents[1] / "datasets" / "zoo"
SEEDS = ("tvm", "dnnfusion", "intensive")


def _known_seed(name: str) -> bool:
    """A seed, or SEED/LAYOUT (its groups in a layout: traces the cost model sees layouts in)."""
    from ago_search.layout import LayoutError, parse_layout

    base, _, layout = name.partition("/")
    if base not in SEEDS:
        return False
    try:
        parse_layout(layout or None)
    except LayoutError:
        return False
    return True


def _seed_order(seeds: Any) -> list[str]:
    """Seeds in SEEDS order, each one's layouts after it."""

    def rank(name: str) -> tuple[int, str]:
        base = name.partition("/")[0]
        return (SEEDS.index(base) if base in SEEDS else len(SEEDS), name)

    return sorted(seeds, key=rank)


MODELS_FILE = "models.json"
TASKS_FILE = "tasks.json"


@dataclass(frozen=True)
class ModelSource:
    """A model to collect on: its label, ONNX file and fixed input shapes."""

    name: str
    path: Path
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class _Entry:
    """A unique task and where it comes from."""

    task: Any  # schedule.Task
    weights: dict[str, int] = field(default_factory=dict)  # model -> calls per inference
    seeds: set[str] = field(default_factory=set)
    ops: list[dict] = field(default_factory=list)  # features.OpInfo.to_json() of the group
    op_edges: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "models": sorted(self.weights),
            "weights": dict(sorted(self.weights.items())),
            "seeds": _seed_order(self.seeds),
            "name": self.task.name,
            "flops": self.task.flops,
            "complex_ops": self.task.complex_ops,
            "ops": self.ops,
            "op_edges": [list(e) for e in self.op_edges],
        }


@dataclass(frozen=True)
class CollectReport:
    """A collection run: its tasks, what it measured and the database afterwards."""

    device_key: str
    database: str
    export: str
    models: tuple[str, ...]
    seeds: tuple[str, ...]
    tasks: int
    multi_complex_tasks: int
    tasks_per_seed: dict[str, int]
    failed: tuple[str, ...]  # "model/seed: reason" for what could not be extracted
    passes: int
    trials_per_task: int
    records_before: int
    records_after: int
    statuses: dict[str, int]
    wall_s: float
    stopped: str  # "done", "time budget", "exhausted"

    @property
    def new_records(self) -> int:
        return self.records_after - self.records_before

    @property
    def records_per_s(self) -> float:
        return self.new_records / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "device_key": self.device_key,
            "database": self.database,
            "export": self.export,
            "models": list(self.models),
            "seeds": list(self.seeds),
            "tasks": self.tasks,
            "multi_complex_tasks": self.multi_complex_tasks,
            "tasks_per_seed": dict(self.tasks_per_seed),
            "failed": list(self.failed),
            "passes": self.passes,
            "trials_per_task": self.trials_per_task,
            "records_before": self.records_before,
            "records_after": self.records_after,
            "new_records": self.new_records,
            "records_per_s": self.records_per_s,
            "statuses": dict(self.statuses),
            "wall_s": self.wall_s,
            "stopped": self.stopped,
        }


def resolve_models(
    models: Sequence[str | Path] | None, zoo: str | Path = DEFAULT_ZOO
) -> list[ModelSource]:
    """Zoo model names (shapes from the zoo manifest) or .onnx paths (labelled by file stem);
    None or empty: every model of the zoo."""
    zoo = Path(zoo)
    manifest_path = zoo / "manifest.json"
    entries: dict[str, Any] = {}
    if manifest_path.exists():
        entries = json.loads(manifest_path.read_text()).get("models", {})
    names = list(models) if models else sorted(entries)
    if not names:
        raise AgoSearchError(f"no models: the zoo {zoo} has no manifest.json (scripts/make_zoo.py)")
    out = []
    for item in names:
        text = str(item)
        if text in entries:
            entry = entries[text]
            shapes = {k: tuple(v) for k, v in entry.get("inputs", {}).items()}
            out.append(ModelSource(text, zoo / entry["file"], shapes))
        elif text.endswith(".onnx") and Path(text).is_file():
            out.append(ModelSource(Path(text).stem, Path(text)))
        else:
            known = ", ".join(sorted(entries)) or "none"
            raise AgoSearchError(f"model {text!r}: not in the zoo ({known}) nor an .onnx file")
    return out


def gather_tasks(
    sources: Sequence[ModelSource], seeds: Sequence[str], target: Any
) -> tuple[dict[str, _Entry], dict[str, int], list[str]]:
    """(task_key -> entry, unique tasks per seed, failures) over every model x seed."""
    from ago_search.pipeline import import_model, plan_model, prepare_model
    from cost_model.features import op_infos_from_opgraph

    entries: dict[str, _Entry] = {}
    per_seed: dict[str, set[str]] = {s: set() for s in seeds}
    failed: list[str] = []
    for source in sources:
        try:
            prepared = prepare_model(import_model(source.path, source.input_shapes), target)
        except Exception as exc:  # a long run keeps going without this model
            log.warning("%s: not imported: %s", source.name, exc)
            failed.append(f"{source.name}: {exc}")
            continue
        for seed in seeds:
            start = time.perf_counter()
            try:
                tasks = plan_model(prepared, seed).tasks
            except Exception as exc:
                log.warning("%s/%s: no tasks: %s", source.name, seed, exc)
                failed.append(f"{source.name}/{seed}: {exc}")
                continue
            for task in tasks:
                entry = entries.get(task.key)
                if entry is None:
                    entry = entries[task.key] = _Entry(task)
                    if task.nodes and task.nodes[0]:
                        ops, op_edges = op_infos_from_opgraph(prepared.graph, task.nodes[0])
                        entry.ops = [op.to_json() for op in ops]
                        entry.op_edges = op_edges
                entry.weights[source.name] = max(entry.weights.get(source.name, 0), task.weight)
                entry.seeds.add(seed)
                per_seed[seed].add(task.key)
            log.info(
                "%s/%s: %d tasks (%.1f s), %d unique so far",
                source.name,
                seed,
                len(tasks),
                time.perf_counter() - start,
                len(entries),
            )
    return entries, {s: len(k) for s, k in per_seed.items()}, failed


def pass_targets(trials_per_task: int, first_trials: int, step_trials: int) -> list[int]:
    """Per-task trial targets of the passes: first_trials, then +step_trials up to the end."""
    if trials_per_task < 1:
        raise AgoSearchError(f"trials per task must be >= 1, got {trials_per_task}")
    targets = [min(max(first_trials, 1), trials_per_task)]
    while targets[-1] < trials_per_task:
        targets.append(min(targets[-1] + max(step_trials, 1), trials_per_task))
    return targets


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_labels(out: Path, entries: dict[str, _Entry]) -> None:
    """models.json and tasks.json, merged with what earlier runs wrote there."""
    tasks_path, models_path = out / TASKS_FILE, out / MODELS_FILE
    info: dict[str, Any] = {}
    if tasks_path.exists():
        try:
            info = json.loads(tasks_path.read_text())
        except ValueError:
            log.warning("%s is unreadable: rewritten", tasks_path)
    for key, entry in entries.items():
        new = entry.to_json()
        old = info.get(key)
        if old:
            new["weights"] = {**old.get("weights", {}), **new["weights"]}
            new["models"] = sorted(new["weights"])
            seeds = set(old.get("seeds", ())) | set(new["seeds"])
            new["seeds"] = _seed_order(seeds)
        info[key] = new
    _write_json_atomic(tasks_path, info)
    _write_json_atomic(models_path, {key: value["models"] for key, value in info.items()})


def load_task_weights(out: str | Path, model: str | None = None) -> dict[str, float]:
    """task_key -> weight from a collection's tasks.json: calls per inference of `model`, or
    summed over the models (None); for `load_dataset(task_weights=...)`."""
    info = json.loads((Path(out) / TASKS_FILE).read_text())
    weights = {}
    for key, value in info.items():
        w = value.get("weights", {})
        total = w.get(model, 0) if model is not None else sum(w.values())
        if total:
            weights[key] = float(total)
    return weights


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def collect(
    models: Sequence[str | Path] | None = None,
    device: str = "host",
    db: str | Path | None = None,
    out: str | Path | None = None,
    seeds: Sequence[str] = SEEDS,
    trials_per_task: int = 64,
    first_trials: int = 8,
    step_trials: int = 16,
    hours: float | None = None,
    cost_model: str = "xgb",
    batch_tasks: int = 32,
    zoo: str | Path = DEFAULT_ZOO,
    verify: bool = True,
    seed: int | None = None,
    protocol: Any = None,
    export_every_s: float = 300.0,
    labels_only: bool = False,
) -> CollectReport:
    """Collect device traces of the zoo's tasks into `db` and export them to `out`.

    models: zoo names or .onnx paths (None: the whole zoo). out: default
    datasets/traces/<device key>; db: default <out>/collect.db. trials_per_task: the search
    trials each task should end with; first_trials: pass 1's target (random cost model);
    step_trials: added per later pass (`cost_model`). hours: stop starting batches after this.
    export_every_s: the export is rewritten after a batch when it is older than this, and at
    the end (the database holds every record at once; the export is what gets committed).
    labels_only: write models.json and tasks.json and stop (nothing is measured, the database
    is not opened): refreshes the labels of a collection made by an older version.
    """
    from ago_search.database import Status, TuningDatabase, export_jsonl, import_jsonl
    from ago_search.devices import load_device
    from ago_search.schedule.config import TuningConfig
    from ago_search.schedule.results import task_results
    from ago_search.schedule.tune import tune_tasks
    from cost_model.factory import make_cost_model

    started = time.perf_counter()
    deadline = started + hours * 3600 if hours else None
    unknown = [s for s in seeds if not _known_seed(s)]
    if unknown or not seeds:
        raise AgoSearchError(
            f"seeds {unknown or '(none)'}: choose from {', '.join(SEEDS)}, alone or in a "
            "layout (tvm/NHWC, tvm/NCHW16c)"
        )
    if cost_model not in ("xgb", "random"):
        raise AgoSearchError(f"cost model {cost_model!r}: choose xgb or random")
    if batch_tasks < 1:
        raise AgoSearchError("batch_tasks must be >= 1")
    targets = pass_targets(trials_per_task, first_trials, step_trials)
    profile = load_device(device)
    out = Path(out) if out else DEFAULT_ZOO.parent / "traces" / profile.key
    out.mkdir(parents=True, exist_ok=True)
    db = Path(db) if db else out / "collect.db"
    export = out / f"{db.stem}.jsonl.gz"
    sources = resolve_models(models, zoo)

    target = profile.tvm_target()
    entries, per_seed, failed = gather_tasks(sources, list(seeds), target)
    if not entries:
        raise AgoSearchError("no tasks: none of the models could be partitioned")
    _write_labels(out, entries)
    collect_report = functools.partial(
        CollectReport,
        device_key=profile.key,
        database=str(db),
        export=str(export),
        models=tuple(s.name for s in sources),
        seeds=tuple(seeds),
        tasks=len(entries),
        multi_complex_tasks=sum(1 for e in entries.values() if e.task.complex_ops > 1),
        tasks_per_seed=per_seed,
        failed=tuple(failed),
    )
    if labels_only:
        log.info("labels of %d tasks written to %s", len(entries), out)
        return collect_report(
            passes=0,
            trials_per_task=trials_per_task,
            records_before=0,
            records_after=0,
            statuses={},
            wall_s=time.perf_counter() - started,
            stopped="labels only",
        )
    # cheap tasks first, so that pass 1 covers many tasks early
    tasks = sorted((e.task for e in entries.values()), key=lambda t: (t.flops, t.key))
    log.info(
        "%d unique tasks from %d models x %d seeds (%s); passes to %s trials per task",
        len(tasks),
        len(sources),
        len(seeds),
        ", ".join(f"{s}: {n}" for s, n in per_seed.items()),
        targets,
    )

    store = TuningDatabase(db)
    if len(store) == 0 and export.is_file():
        # A fresh clone has the committed export but not the database: start from the export,
        # or the first batch's export would overwrite it with fewer records.
        imported = import_jsonl(store, export)
        log.info("started the database from %s: %s records", export, imported)
    records_before = len(store)
    stopped, passes = "done", 0
    exhausted: set[str] = set()
    last_export = time.perf_counter()
    try:
        for number, per_task in enumerate(targets, start=1):
            model_name = "random" if number == 1 else cost_model
            have = {r.key: r.trials for r in task_results(store, tasks, profile.key)}
            todo = [t for t in tasks if have[t.key] < per_task and t.key not in exhausted]
            if not todo:
                continue
            passes = number
            log.info(
                "pass %d: %d of %d tasks to %d trials (%s cost model)",
                number,
                len(todo),
                len(tasks),
                per_task,
                model_name,
            )
            pass_new = 0
            # One round of `round_trials` per task and pass, tasks in turn: a round's
            # evolutionary search costs the same for 2 candidates as for 16, so small rounds
            # (the first-pass scheduler's, sized for a tuning budget) waste most of the time.
            round_trials = per_task - (targets[number - 2] if number > 1 else 0)
            for batch in _batches(todo, batch_tasks):
                if deadline is not None and time.perf_counter() > deadline:
                    stopped = "time budget"
                    break
                before = len(store)
                batch_start = time.perf_counter()
                config = TuningConfig(
                    trials=sum(have[t.key] for t in batch) + round_trials * len(batch),
                    scheduler="round-robin",
                    trials_per_round=round_trials,
                    search="replay" if model_name == "random" else "evolutionary",
                    verify=verify,
                    seed=seed,
                    protocol=protocol,
                )
                try:
                    guide = make_cost_model(model_name, seed=seed)
                    report = tune_tasks(batch, profile, store, config, cost_model=guide)
                except Exception as exc:  # noqa: BLE001 - an hours-long run outlives one batch
                    # Every measurement is already in the database; the next batch goes on.
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    log.warning("a batch of %d tasks failed: %s", len(batch), first)
                    continue
                pass_new += report.trials_run
                exported = ""
                if time.perf_counter() - last_export >= export_every_s:
                    export_jsonl(store, export, device_key=profile.key)
                    last_export, exported = time.perf_counter(), f"; exported {export}"
                seconds = time.perf_counter() - batch_start
                added = len(store) - before
                ok = store.status_counts(device_key=profile.key)[Status.OK]
                log.info(
                    "pass %d: %d tasks, %d new records in %.0f s (%.2f records/s); "
                    "%d records, %d ok%s",
                    number,
                    len(batch),
                    added,
                    seconds,
                    added / seconds if seconds > 0 else 0.0,
                    len(store),
                    ok,
                    exported,
                )
            if stopped != "done":
                break
            if pass_new == 0:
                # these tasks' searches propose only known schedules (small design spaces):
                # later passes skip them, the other tasks go on
                exhausted.update(t.key for t in todo)
                log.info("pass %d: %d tasks have no new schedule to offer", number, len(todo))
        if exhausted and len(exhausted) == len(tasks):
            stopped = "exhausted"
        if not export.exists() or len(store) != records_before:
            export_jsonl(store, export, device_key=profile.key)
        statuses = {str(s): n for s, n in store.status_counts(device_key=profile.key).items()}
        records_after = len(store)
    finally:
        store.close()
    return collect_report(
        passes=passes,
        trials_per_task=trials_per_task,
        records_before=records_before,
        records_after=records_after,
        statuses=statuses,
        wall_s=time.perf_counter() - started,
        stopped=stopped,
    )
