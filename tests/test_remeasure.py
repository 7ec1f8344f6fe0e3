"""`ago-search remeasure`: stored schedules timed again on this machine; their labels replaced
(the fastest of interleaved rounds), marked, exported, resumed, and preferred by the loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ago_search.database import Status, TuningDatabase, export_jsonl, import_jsonl, read_jsonl
from ago_search.devices import load_device
from ago_search.remeasure import remeasure
from cost_model.input_pipeline import MEASUREMENT_FIX_AT, load_dataset

SMOKE_TRACES = Path(__file__).parent / "data" / "smoke_traces.jsonl.gz"


@pytest.fixture()
def host_db(tmp_path: Path) -> tuple[Path, str]:
    """Two tasks of the smoke traces, their records moved to this host's device key (the
    smoke traces were timed in-process under a made-up key) with a made-up slow label."""
    key = load_device("host").key
    source = TuningDatabase(tmp_path / "smoke.db")
    import_jsonl(source, SMOKE_TRACES)
    db_path = tmp_path / "host.db"
    db = TuningDatabase(db_path)
    tasks = [t.task_key for t in source.tasks()][:2]
    for task_key in tasks:
        workload = source.workload(task_key)
        entry = source.task(task_key)
        db.commit_task(task_key, entry.target, workload, entry.name)
        for record in source.records(task_key, status=Status.OK)[:4]:
            slow = tuple(10 * s for s in record.latencies)  # as if timed on a busy machine
            db.commit_record(
                dataclasses.replace(record, device_key=key, latencies=slow, median=None)
            )
    db.close()
    source.close()
    return db_path, key


@pytest.mark.slow
def test_remeasure_replaces_labels_exports_and_resumes(host_db, tmp_path: Path) -> None:
    db_path, key = host_db
    export = tmp_path / "remeasured.jsonl.gz"
    report = remeasure(db_path, per_task=3, rounds=2, export=export)
    assert report.tasks == 2 and report.tasks_done == 2
    assert report.remeasured + report.failed + report.wrong_result == 6
    assert report.remeasured >= 4
    # the made-up labels were 10x the smoke timings: the new ones are far below them
    assert report.median_ratio is not None and report.median_ratio < 0.5

    with TuningDatabase(db_path, read_only=True) as db:
        records = [r for t in db.tasks(key) for r in db.records(t.task_key, key, Status.OK)]
    again = [r for r in records if "remeasured" in r.extra]
    assert len(again) == report.remeasured
    for record in again:
        info = record.extra["remeasured"]
        assert len(info["rounds"]) == 2 and record.median == pytest.approx(min(info["rounds"]))
        assert info["previous_median"] > record.median
    lines = [line for line in read_jsonl(export) if line["kind"] == "record"]
    assert len(lines) == report.remeasured  # only what was re-measured

    # a second run finds nothing left to do among the same per-task samples
    second = remeasure(db_path, per_task=3, rounds=1)
    assert second.remeasured == 0 and second.tasks_done == 2

    # the loader prefers the re-measured label over the stale one in another file
    stale = tmp_path / "stale.jsonl.gz"
    with TuningDatabase(tmp_path / "stale.db") as db:
        import_jsonl(db, export)
        for record in db.records():
            plain = {k: v for k, v in record.extra.items() if k != "remeasured"}
            # an old label: measured before the measurement fix (one after it is clean)
            db.commit_record(
                dataclasses.replace(
                    record,
                    latencies=(1.0,),
                    median=None,
                    extra=plain,
                    measured_at=MEASUREMENT_FIX_AT - 3600,
                ),
                replace=True,
            )
        export_jsonl(db, stale)
    both = load_dataset([stale, export], cache=False)
    assert all(max(t.latencies) < 1.0 for t in both.tasks)
    only = load_dataset([stale, export], cache=False, remeasured_only=True)
    # (less any timing disturbed by another process through every retry: see below)
    undisturbed = [x for x in lines if min(x["extra"]["remeasured"]["cpu_share"]) >= 0.9]
    assert sum(len(t.latencies) for t in only.tasks) == len(undisturbed)
    assert sum(len(t.latencies) for t in both.tasks) == len(lines)
    assert load_dataset([stale], cache=False, remeasured_only=True).tasks == ()

    # a re-measurement with a round disturbed by other processes is no clean label
    disturbed = tmp_path / "disturbed.jsonl.gz"
    with TuningDatabase(tmp_path / "disturbed.db") as db:
        import_jsonl(db, export)
        records = db.records()
        first = records[0].task_key
        for record in records:
            info = dict(record.extra["remeasured"])
            info["cpu_share"] = [1.0, 0.5] if record.task_key == first else [1.0, 0.95]
            extra = {**record.extra, "remeasured": info}
            db.commit_record(dataclasses.replace(record, extra=extra), replace=True)
        export_jsonl(db, disturbed)
    kept = load_dataset([disturbed], cache=False, remeasured_only=True)
    assert [t.task_key for t in kept.tasks] == sorted({r.task_key for r in records} - {first})
    assert len(kept.tasks[0].latencies) == sum(r.task_key != first for r in records)

    # a fresh clone (a new database from the stale traces and the export) has nothing to do
    clone = remeasure(tmp_path / "clone.db", per_task=3, rounds=1, sources=[stale], export=export)
    assert clone.remeasured == 0 and clone.tasks_done == 2


def test_remeasure_cli_names_bad_input(tmp_path: Path, capsys) -> None:
    from ago_search.cli import main

    code = main(["remeasure", str(tmp_path / "x.db"), "--rounds", "0"])
    assert code == 2
    assert "rounds must be >= 1" in capsys.readouterr().err


def test_clean_labels_are_remeasured_undisturbed_or_measured_after_the_fix():
    from cost_model.input_pipeline import MEASUREMENT_FIX_AT, clean_label

    assert clean_label({"measured_at": MEASUREMENT_FIX_AT + 60, "extra": {"source": "search"}})
    assert not clean_label({"measured_at": MEASUREMENT_FIX_AT - 60, "extra": {}})
    quiet = {"remeasured": {"cpu_share": [0.99, 0.98]}}
    busy = {"remeasured": {"cpu_share": [0.99, 0.5]}}
    assert clean_label({"measured_at": MEASUREMENT_FIX_AT - 60, "extra": quiet})
    assert not clean_label({"measured_at": MEASUREMENT_FIX_AT + 60, "extra": busy})
