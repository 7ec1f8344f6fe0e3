"""Tests of ago_search.schedule.tasks: tasks are unique group PrimFuncs, shared by repeated
blocks, stable, and the same as MetaSchedule's own task extraction."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from ago_search.database import task_key
from ago_search.frontend import import_onnx
from ago_search.graph import OpGraph, build_opgraph, legalize, tvm_default_groups
from ago_search.plan import Plan, apply_plan
from ago_search.schedule import Task, extract_tasks, workload_module

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Planned:
    legalized: tvm.IRModule
    graph: OpGraph
    plan: Plan
    fused: tvm.IRModule


def _default_plan(entry: dict) -> Planned:
    imported = import_onnx(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()})
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    groups = tvm_default_groups(imported.mod, TARGET, graph, legalized)
    plan = Plan.from_assignment(graph, groups.node_group)
    return Planned(legalized, graph, plan, apply_plan(legalized, graph, plan, TARGET))


@pytest.fixture(scope="module")
def resnet18(zoo) -> Planned:
    return _default_plan(zoo["resnet18"])


@pytest.fixture(scope="module")
def bert_tiny(zoo) -> Planned:
    return _default_plan(zoo["bert_tiny"])


def _metaschedule_weights(fused: tvm.IRModule) -> dict[int, int]:
    """MetaSchedule's tasks of the same module: its workload hash -> weight."""
    extracted = ms.relax_integration.extract_tasks(fused, TARGET)
    weights: dict[int, int] = {}
    for task in extracted:
        workload = int(ms.database.Workload(task.mod).as_json()[0])
        weights[workload] = weights.get(workload, 0) + int(task.weight)
    assert len(weights) == len(extracted)
    return weights


def _check_against_metaschedule(planned: Planned, tasks: list[Task]) -> None:
    assert {t.workload: t.weight for t in tasks} == _metaschedule_weights(planned.fused)


def test_resnet18_residual_blocks_share_tasks(resnet18):
    tasks = extract_tasks(resnet18.fused, TARGET, resnet18.plan, resnet18.graph)
    groups = len(resnet18.plan.groups)
    assert len(tasks) < groups
    assert any(t.weight > 1 for t in tasks)
    assert sum(t.weight for t in tasks) == groups
    assert len({t.key for t in tasks}) == len(tasks)
    # every group is served by exactly one task, and a task names its groups' nodes
    served = [nodes for t in tasks for nodes in t.nodes]
    assert sorted(served) == sorted(g.nodes for g in resnet18.plan.groups)
    for t in tasks:
        complex_per_group = {
            sum(1 for n in nodes if resnet18.graph.node(n)["complex"]) for nodes in t.nodes
        }
        assert complex_per_group == {t.complex_ops}
        assert t.flops > 0 or t.complex_ops == 0
    _check_against_metaschedule(resnet18, tasks)


def test_task_keys_are_stable(resnet18):
    first = extract_tasks(resnet18.fused, TARGET, resnet18.plan, resnet18.graph)
    again = apply_plan(resnet18.legalized, resnet18.graph, resnet18.plan, TARGET)
    second = extract_tasks(again, TARGET, resnet18.plan, resnet18.graph)
    assert [t.key for t in first] == [t.key for t in second]
    assert first == second
    # without the plan: same tasks, no nodes
    bare = extract_tasks(resnet18.fused, TARGET)
    assert [t.key for t in bare] == [t.key for t in first]
    assert all(nodes == () for t in bare for nodes in t.nodes)
    # another target, other keys; the workload stays
    other = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    moved = extract_tasks(resnet18.fused, other)
    assert [t.workload for t in moved] == [t.workload for t in first]
    assert not {t.key for t in moved} & {t.key for t in first}


def test_unchanged_groups_keep_their_tasks_in_another_plan(resnet18):
    """A task belongs to a PrimFunc, not to a plan: merging two groups elsewhere (which renames
    and renumbers groups) leaves the other groups' keys as they were."""
    plan, graph = resnet18.plan, resnet18.graph
    last, before = plan.groups[-1], plan.groups[-2]  # ... -> reshape -> matmul_add
    merged = plan.with_groups([*plan.groups[:-2], type(last)(before.nodes + last.nodes)])
    fused = apply_plan(resnet18.legalized, graph, merged, TARGET)
    old = {t.key for t in extract_tasks(resnet18.fused, TARGET, plan, graph)}
    new = extract_tasks(fused, TARGET, merged, graph)
    changed = [t for t in new if t.key not in old]
    assert [t.nodes for t in changed] == [(before.nodes + last.nodes,)]


def test_task_is_a_metaschedule_task(resnet18):
    (task, *_) = [t for t in extract_tasks(resnet18.fused, TARGET) if t.weight > 1]
    assert int(ms.database.Workload(task.mod).as_json()[0]) == task.workload
    assert task.key == task_key(task.workload, TARGET)
    extracted = task.to_extracted_task()
    assert extracted.weight == task.weight and extracted.task_name == task.name
    assert "T.prim_func" in task.script()
    # a global_symbol does not change the workload
    named = workload_module(task.prim_func.with_attr("global_symbol", "some_kernel"))
    assert tvm_ffi.structural_equal(named, task.mod)


def test_bert_tiny_encoder_layers_share_tasks(bert_tiny):
    tasks = extract_tasks(bert_tiny.fused, TARGET, bert_tiny.plan, bert_tiny.graph)
    groups = bert_tiny.plan.groups
    assert sum(t.weight for t in tasks) == len(groups)
    assert len(tasks) < len(groups) / 2
    complex_tasks = [t for t in tasks if t.complex_ops > 0]
    complex_groups = [g for g in groups if any(bert_tiny.graph.node(n)["complex"] for n in g.nodes)]
    assert sum(t.weight for t in complex_tasks) == len(complex_groups)
    # each of the 2 encoder layers calls every matmul kernel equally often
    assert all(t.weight % 2 == 0 for t in complex_tasks)
    _check_against_metaschedule(bert_tiny, tasks)


_KEYS_SCRIPT = """
import json, sys, tvm
from ago_search.frontend import import_onnx
from ago_search.graph import build_opgraph, legalize
from ago_search.plan import Plan, apply_plan
from ago_search.schedule import extract_tasks
target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
imported = import_onnx(sys.argv[1])
legalized = legalize(imported.mod, target)
graph = build_opgraph(imported.mod, target=target, legalized=legalized)
plan = Plan.from_groups(graph, [[n] for n in graph.order])
fused = apply_plan(legalized, graph, plan, target)
print(json.dumps([t.key for t in extract_tasks(fused, target)]))
"""


@pytest.mark.slow
def test_task_keys_are_the_same_in_another_process(zoo):
    path = zoo["mlp"]["path"]
    run = subprocess.run(
        [sys.executable, "-c", _KEYS_SCRIPT, path],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=True,
    )
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    imported = import_onnx(path)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    plan = Plan.from_groups(graph, [[n] for n in graph.order])
    fused = apply_plan(legalized, graph, plan, TARGET)
    assert [t.key for t in extract_tasks(fused, TARGET)] == theirs
