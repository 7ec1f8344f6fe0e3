"""ago_search.report: tables and command summaries made from the JSON the reports write."""

from __future__ import annotations

import json

import pytest

from ago_search.errors import AgoSearchError
from ago_search.report import (
    format_bench,
    format_collect,
    format_cost_model_metrics,
    format_inspect,
    format_remeasure,
    format_search,
    format_tuned,
    markdown_table,
    replace_table,
    text_table,
)


def _cells(line: str) -> list[str]:
    """The cells of one markdown table line."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in line[1:-1].split("|")]


# ---------------------------------------------------------------------------------------
# tables


def test_markdown_table_has_header_separator_and_one_line_per_row():
    table = markdown_table(
        ["model", "ms", "verified"], [["mlp", "0.500", True], ["bert", 12, None]]
    )
    lines = table.splitlines()
    assert len(lines) == 4
    assert _cells(lines[0]) == ["model", "ms", "verified"]
    assert all(set(c) <= set("-:") and c for c in _cells(lines[1]))
    # numbers are shown as given (no reformatting of "0.500"), None is an empty cell
    assert _cells(lines[2]) == ["mlp", "0.500", "True"]
    assert _cells(lines[3]) == ["bert", "12", ""]


def test_markdown_table_alignment_goes_into_the_separator():
    table = markdown_table(["a", "b", "c"], [["x", "1", "y"]], align="<>^")
    separator = _cells(table.splitlines()[1])
    assert separator[0].startswith(":") and not separator[0].endswith(":")
    assert separator[1].endswith(":") and not separator[1].startswith(":")
    assert separator[2].startswith(":") and separator[2].endswith(":")
    with pytest.raises(ValueError, match="one of"):
        markdown_table(["a", "b"], [], align="<")


def test_markdown_table_without_rows_is_header_and_separator():
    lines = markdown_table(["a", "b"], []).splitlines()
    assert len(lines) == 2 and _cells(lines[0]) == ["a", "b"]


def test_text_table_columns_line_up_under_their_rule():
    table = text_table(["name", "ms"], [["long-runtime-name", "1.5"], ["x", "12.25"]], align="<>")
    header, rule, *rows = table.splitlines()
    assert header.split() == ["name", "ms"]
    assert [len(dashes) for dashes in rule.split()] == [len("long-runtime-name"), len("12.25")]
    assert [r.split() for r in rows] == [["long-runtime-name", "1.5"], ["x", "12.25"]]
    # right-aligned: every cell of the column ends where its rule ends
    assert {len(line.rstrip()) for line in (header, rule, *rows)} == {len(rule)}
    assert not any(line != line.rstrip() for line in table.splitlines())


def test_replace_table_replaces_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- t:start -->\n| old |\n|---|\n<!-- t:end -->\n\nafter\n")
    replace_table(readme, "<!-- t:start -->", "<!-- t:end -->", "| new |\n|---|\n| 1 |")
    assert readme.read_text() == (
        "# Title\n\n<!-- t:start -->\n| new |\n|---|\n| 1 |\n<!-- t:end -->\n\nafter\n"
    )
    # again: the same file, not a table inserted twice
    replace_table(readme, "<!-- t:start -->", "<!-- t:end -->", "| new |\n|---|\n| 1 |")
    assert readme.read_text().count("| new |") == 1


def test_replace_table_says_which_marker_is_missing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n<!-- t:start -->\n| old |\n")
    with pytest.raises(AgoSearchError, match=r"README\.md: no <!-- t:end --> marker"):
        replace_table(readme, "<!-- t:start -->", "<!-- t:end -->", "| new |")
    assert readme.read_text() == "# Title\n<!-- t:start -->\n| old |\n"  # left as it was
    readme.write_text("<!-- t:end -->\n<!-- t:start -->\n")
    with pytest.raises(AgoSearchError, match="comes before"):
        replace_table(readme, "<!-- t:start -->", "<!-- t:end -->", "| new |")
    with pytest.raises(AgoSearchError, match="cannot read"):
        replace_table(tmp_path / "absent.md", "a", "b", "| new |")


# ---------------------------------------------------------------------------------------
# command summaries


def _check(name: str, max_rel_err: float | str, ok: bool, mismatched: float = 0.0) -> dict:
    return {
        "name": name,
        "shape": [1, 10],
        "max_abs_err": max_rel_err,
        "max_rel_err": max_rel_err,
        "ref_max_abs": 1.0,
        "mismatched": mismatched,
        "ok": ok,
        "note": "",
    }


def _run(runtime: str, threads: int, median: float | None, checks=(), error=None) -> dict:
    verified = median is not None and (
        runtime == "onnxruntime" or (bool(checks) and all(c["ok"] for c in checks))
    )
    return {
        "runtime": runtime,
        "threads": threads,
        "timing": None if median is None else {"median": median, "spread": 0.05},
        "setup_s": 0.25,
        "threads_used": threads,
        "checks": list(checks),
        "error": error,
        "verified": verified,
    }


BENCH = {
    "model": "m.onnx",
    "cpu": "test cpu",
    "target": "llvm",
    "versions": {"tvm": "0.27", "onnxruntime": "1.31"},
    "compile_s": 1.5,
    "protocol": {"repeat": 10},
    "tolerance": 1e-3,
    "runs": [
        _run("tvm-default", 1, 0.004, [_check("y", 2e-7, True)]),
        _run("onnxruntime", 1, 0.002),
        _run("onnxruntime", 2, 0.001),
        _run("tvm-default", 2, 0.0005, [_check("y", 0.05, False, 0.02)]),
        _run("plan-tuned", 2, None, error="worker timed out after 1 s"),
    ],
    "source_checks": [_check("y", 1e-7, True)],
    "source_check_note": "",
}


def _table_rows(text: str, first: str) -> list[list[str]]:
    """The rows of the text table whose header line starts with `first`."""
    lines = text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines[:-1])
        if line.split()[:1] == [first] and set(lines[i + 1]) == {"-", " "}
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_format_bench_row_per_run_ordered_by_threads_reference_first():
    text = format_bench(json.loads(json.dumps(BENCH)))
    rows = _table_rows(text, "runtime")
    assert [(r[0], r[1]) for r in rows] == [
        ("onnxruntime", "1"),
        ("tvm-default", "1"),
        ("onnxruntime", "2"),
        ("tvm-default", "2"),
        ("plan-tuned", "2"),
    ]
    # runtime, threads, busy, median ms, spread %, vs ORT, abs err, rel err, verified
    assert rows[0] == ["onnxruntime", "1", "1", "2", "5.0", "1.00x", "-", "-", "reference"]
    assert rows[1] == ["tvm-default", "1", "1", "4", "5.0", "0.50x", "2.00e-07", "2.00e-07", "yes"]
    assert rows[3][3:6] == ["0.5", "5.0", "2.00x"] and rows[3][-1] == "NO"
    assert rows[4] == ["plan-tuned", "2", "failed", "NO"]
    assert "tvm-default x2: output 'y' differs from ORT's: 2.0% of elements" in text
    assert "plan-tuned x2: worker timed out after 1 s" in text
    assert "folded graph vs the model file (ORT): same, max rel err 1.00e-07" in text
    assert "median of 10 repeats" in text and "tolerance 0.001" in text
    assert "versions: tvm 0.27, onnxruntime 1.31" in text


def test_format_bench_reads_inf_errors_written_as_strings():
    data = {**BENCH, "runs": [_run("onnxruntime", 1, 0.002), _run("tvm-default", 1, 0.003)]}
    data["runs"][1]["checks"] = [_check("y", "inf", False, 1.0)]
    rows = _table_rows(format_bench(data), "runtime")
    assert rows[1][6:] == ["inf", "inf", "NO"]


def _inspect_data(plan: bool) -> dict:
    group = {
        "name": "g0_conv2d_relu",
        "nodes": ["a", "b"],
        "ops": ["relax.nn.conv2d", "relax.nn.relu"],
    }
    data = {
        "model": "m.onnx",
        "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        "opset": 17,
        "original_opset": 13,
        "folded_nodes": 4,
        "rewrite": {
            "ops_before": 10,
            "ops_after": 8,
            "rules": [{"rule": "fold", "ops_removed": 2}, {"rule": "idle", "ops_removed": 0}],
        },
        "summary": {
            "nodes": 8,
            "complex_ops": 1,
            "flops": 2.5e9,
            "params": 1200,
            "bytes": 3e6,
            "ops": [
                {
                    "op": "relax.nn.conv2d",
                    "count": 1,
                    "flops": 2.5e9,
                    "params": 1200,
                    "mapping": "many-to-many",
                    "complex": True,
                },
                {
                    "op": "relax.nn.relu",
                    "count": 7,
                    "flops": 0,
                    "params": 0,
                    "mapping": "one-to-one",
                    "complex": False,
                },
            ],
            "mapping_counts": {"many-to-many": 1, "one-to-one": 7},
        },
        "tvm_default_groups": {
            "count": 2,
            "multi_complex": 0,
            "groups": [{**group, "complex_ops": 1}, {**group, "name": "g1", "complex_ops": 0}],
        },
    }
    if plan:
        data["plan"] = {
            "name": "intensive",
            "notes": ["2 producer->consumer pairs left to profiling"],
            "count": 1,
            "multi_complex": 1,
            "groups": [{**group, "name": "p0", "ops": ["relax.nn.conv2d"] * 9, "complex_ops": 2}],
        }
    return data


def test_format_inspect_shows_the_summary_and_an_operator_row_each():
    text = format_inspect(_inspect_data(plan=False))
    assert "inputs: x float32[1x3x8x8]" in text
    assert "opset 13 -> 17; 4 shape-computing nodes folded to constants" in text
    assert "rewrites: 10 -> 8 operators (fold -2)" in text
    assert "FLOPs: 2.50 G, parameters: 1.20 k, tensor traffic: 3.00 MB" in text
    assert _table_rows(text, "operator") == [
        ["relax.nn.conv2d", "1", "2.50", "G", "1.20", "k", "many-to-many", "yes"],
        ["relax.nn.relu", "7", "0", "0", "one-to-one"],
    ]
    assert "TVM default fusion: 2 groups; by complex ops per group: 0: 1, 1: 1" in text
    assert "  g0_conv2d_relu: 2 ops (conv2d, relu)" in text
    assert "plan '" not in text


def test_format_inspect_with_a_plan_lists_its_groups_and_notes():
    text = format_inspect(_inspect_data(plan=True))
    assert "plan 'intensive': 1 groups, 1 with several complex ops" in text
    assert "  note: 2 producer->consumer pairs left to profiling" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("p0 "))
    assert "2 ops, 2 complex" in line and line.endswith(", ...]") and line.count("conv2d") == 8


def _task(name: str, best: float | None, untuned: float | None, statuses: dict) -> dict:
    return {
        "key": name,
        "name": name,
        "weight": 2,
        "flops": 1e6,
        "trials": 16,
        "new_trials": 4,
        "best_seconds": best,
        "untuned_seconds": untuned,
        "best_source": "search",
        "statuses": statuses,
        "wrong_max_abs_err": None,
    }


def test_format_tuned_per_task_rows_sums_and_the_bench():
    data = {
        "model": "m.onnx",
        "plan": "tvm",
        "device": "host",
        "device_key": "host-x",
        "database": "t.db",
        "tasks": [
            _task("fused_conv2d_relu", 0.001, 0.004, {"ok": 14, "build_error": 2}),
            _task("add", None, 0.002, {}),
        ],
        "kernels": {"scheduled": ["fused_conv2d_relu"], "untuned": ["add"]},
        "tuning": {
            "trials_run": 8,
            "trials_before": 24,
            "budget": 32,
            "scheduler": "first-pass",
            "trials_per_round": 4,
            "cost_model": "xgb",
            "wall_s": 12.4,
        },
        "bench": BENCH,
        "notes": ["something to know"],
    }
    text = format_tuned(data)
    assert "tuning:   8 trials this run (24 before, budget 32), scheduler first-pass" in text
    rows = _table_rows(text, "task")
    assert rows[0] == ["fused_conv2d_relu", "2", "16", "4", "1", "4", "4.0x", "build_error", "2"]
    assert rows[1][:7] == ["add", "2", "16", "4", "-", "2", "-"]
    assert "kernels, sum of weight x latency: best 2 ms, untuned 12 ms" in text
    assert "tuned build: 1 of 2 kernels got a record" in text
    assert "  built untuned: add" in text and "note: something to know" in text
    assert "runtime" in text and "tvm-default" in text  # the bench table follows
    assert "tuning:" not in format_tuned({**data, "tuning": None, "bench": None})


def test_format_cost_model_metrics_rows_and_missing_values():
    metrics = {
        "held_out_models": ["bert_tiny"],
        "gnn": {
            "pairwise_accuracy": 0.7,
            "kendall_tau": 0.41,
            "top1_peak": 0.8,
            "top5_peak": 0.9,
            "mape": 0.25,
        },
        "xgb": {"pairwise_accuracy": 0.65, "kendall_tau": None},
    }
    text = format_cost_model_metrics(metrics)
    assert text.splitlines()[0] == "held-out models: bert_tiny"
    assert _table_rows(text, "model") == [
        ["gnn", "0.700", "0.410", "0.800", "0.900", "0.250"],
        ["xgb", "0.650", "-", "-", "-", "-"],
    ]
    no_held = format_cost_model_metrics({"gnn": metrics["gnn"]})
    assert "none (trained on every model)" in no_held and "xgb" not in no_held


COLLECT = {
    "device_key": "host-x",
    "database": "c.db",
    "export": "out/c.jsonl.gz",
    "models": ["mlp", "bert_tiny"],
    "seeds": ["tvm", "dnnfusion", "intensive"],
    "tasks": 12,
    "multi_complex_tasks": 3,
    "tasks_per_seed": {"tvm": 8, "dnnfusion": 7, "intensive": 9},
    "failed": ["mlp/intensive: no groups"],
    "passes": 2,
    "trials_per_task": 16,
    "records_before": 10,
    "records_after": 110,
    "new_records": 100,
    "records_per_s": 2.5,
    "statuses": {"ok": 95, "build_error": 5},
    "wall_s": 40.0,
    "stopped": "done",
}


def test_format_collect_summary_and_labels_only():
    text = format_collect(COLLECT)
    assert text.splitlines()[0] == (
        "device host-x: 2 models x 3 seeds -> 12 unique tasks (3 with several complex ops)"
    )
    assert "tasks per seed: tvm 8, dnnfusion 7, intensive 9" in text
    assert "records: 110 in the database, 100 new in 40 s (2.50 records/s)" in text
    assert "by status: ok 95, build_error 5" in text
    assert "export:   out/c.jsonl.gz (+ models.json, tasks.json)" in text
    assert text.splitlines()[-1] == "not collected: mlp/intensive: no groups"
    labels = format_collect({**COLLECT, "stopped": "labels only", "failed": []}).splitlines()
    assert len(labels) == 3 and labels[2].startswith("labels only: models.json and tasks.json")


def test_format_remeasure_summary():
    data = {
        "database": "t.db",
        "device_key": "host-x",
        "tasks": 10,
        "tasks_done": 4,
        "remeasured": 37,
        "failed": 1,
        "wrong_result": 0,
        "median_ratio": 0.8123,
        "disturbed": 2,
        "wall_s": 61.2,
        "stopped": "time budget",
    }
    text = format_remeasure(data)
    assert text.startswith("remeasured 37 records of host-x in 61 s (time budget)")
    assert "tasks done 4/10" in text and "median new/recorded latency 0.81" in text
    assert text.endswith("\n  database: t.db")
    assert "latency n/a" in format_remeasure({**data, "median_ratio": None})


# ---------------------------------------------------------------------------------------
# the API's summaries are report's, of the report's JSON


def test_api_formatters_format_the_reports_json():
    from ago_search import api
    from ago_search.collect import CollectReport
    from ago_search.remeasure import RemeasureReport

    fields = {k: v for k, v in COLLECT.items() if k not in ("new_records", "records_per_s")}
    collect = CollectReport(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    )
    assert api.format_collect(collect) == format_collect(json.loads(json.dumps(collect.to_json())))
    remeasure = RemeasureReport("t.db", "k", 1, 1, 2, 0, 0, None, 0, 1.0, "done")
    assert api.format_remeasure(remeasure) == format_remeasure(remeasure.to_json())
    inspect = api.InspectReport(
        model="m.onnx",
        inputs=(("x", (1, 4), "float32"),),
        opset=17,
        original_opset=17,
        folded_nodes=0,
        rewrite=None,
        summary=_inspect_data(plan=False)["summary"],
        default_groups=(api.GroupInfo("g0", ("a",), ("relax.nn.relu",), 0),),
    )
    text = api.format_inspect(inspect)
    assert text == format_inspect(inspect.to_json())
    assert "inputs: x float32[1x4]" in text and "opset 17;" in text


def test_the_search_summary_says_how_to_run_its_library():
    summary = {
        "model": "m.onnx",
        "device_key": "host-x",
        "threads": 2,
        "latency_s": {"onnxruntime": 0.002, "tvm_default": 0.1, "ago_search": 0.001},
        "verified": True,
        "budget_s": 60.0,
        "spent_s": 59.0,
        "outputs": {"library": "out/model.so", "plan": "out/plan.json", "database": "db"},
    }
    text = format_search(summary)
    assert "2.00x" in text and "100.00x" in text
    assert "TVM_NUM_THREADS=2" in text.splitlines()[-1]
    assert "TVM_NUM_THREADS" not in format_search({**summary, "outputs": {}})
    # a short search does not time TVM's default build: no row for it
    untimed = {**summary, "latency_s": {**summary["latency_s"], "tvm_default": None}}
    assert "TVM default" in text and "TVM default" not in format_search(untimed)
