"""The graph-level pieces joined: rewrite -> seeds / random legal partitions -> plan -> compile,
outputs equal ONNX Runtime's on the user's file."""

from __future__ import annotations

import random

import onnxruntime as ort
import pytest

from ago_search.build import compile_plan, run_executable
from ago_search.devices import host_target
from ago_search.frontend import import_onnx, random_inputs
from ago_search.graph import tvm_default_groups
from ago_search.measure.compare import compare_outputs
from ago_search.partition import (
    Illegal,
    dnnfusion_seed,
    intensive_seed,
    singletons,
    tvm_seed,
)
from ago_search.pipeline import prepare_model
from ago_search.plan import Plan

TOLERANCE = 1e-4


def _prepared(zoo, name):
    entry = zoo[name]
    imported = import_onnx(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()})
    return entry, prepare_model(imported, host_target())


def _check(entry, prepared, partition) -> int:
    plan = Plan.from_assignment(prepared.graph, partition.assignment())
    executable = compile_plan(prepared.legalized, prepared.graph, plan, prepared.target)
    imported = prepared.imported
    feeds = random_inputs(imported.inputs, seed=11)
    outputs = run_executable(executable, [feeds[s.name] for s in imported.inputs])
    reference = ort.InferenceSession(entry["path"]).run(None, feeds)
    checks = compare_outputs(outputs, reference, imported.output_names, tolerance=TOLERANCE)
    assert all(c.ok for c in checks), checks
    return len(plan.groups)


def _seeds(prepared):
    graph = prepared.graph
    default = tvm_default_groups(
        prepared.mod, prepared.target, graph=graph, legalized=prepared.legalized
    )
    return {
        "tvm": tvm_seed(graph, default).partition,
        "dnnfusion": dnnfusion_seed(graph).partition,
        "intensive": intensive_seed(graph, cache_bytes=1 << 20).partition,
        "intensive-large": intensive_seed(graph, cache_bytes=256 << 20).partition,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_tiny", "mobilenetv2"])
def test_every_seed_compiles_and_matches_ort(zoo, name):
    entry, prepared = _prepared(zoo, name)
    seeds = _seeds(prepared)
    multi_complex = 0
    for partition in seeds.values():
        _check(entry, prepared, partition)
        multi_complex += sum(
            1 for g in partition.group_ids if partition.group_stats(g).complex_ops > 1
        )
    assert multi_complex > 0  # the intensive seeds really fused several complex ops


@pytest.mark.parametrize(
    "name,seed",
    [("bert_tiny", 0), ("squeezenet", 1), pytest.param("dbnet", 2, marks=pytest.mark.slow)],
)
def test_random_legal_partitions_match_ort(zoo, name, seed):
    """Random merges by Partition's own moves (illegal ones refused), then compiled."""
    entry, prepared = _prepared(zoo, name)
    rng = random.Random(seed)
    partition = singletons(prepared.graph)
    refused = 0
    for _ in range(len(prepared.graph) * 2):
        group = rng.choice(list(partition.group_ids))
        neighbours = sorted(partition.neighbours(group))
        if not neighbours:
            continue
        result = partition.merge(group, rng.choice(neighbours))
        if isinstance(result, Illegal):
            refused += 1
            assert result.reason
            continue
        partition = result
        if partition.num_groups <= max(3, len(prepared.graph) // 4):
            break
    assert partition.num_groups < len(prepared.graph)
    assert _check(entry, prepared, partition) == partition.num_groups
