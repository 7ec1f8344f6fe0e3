"""From an imported model to what the search works on: rewrite -> legalize -> OpGraph.

`prepare_model(imported, target)` runs the DNNFusion-style rewrites on the high-level Relax
module, legalizes it (every operator a `call_tir`; the module plans are applied to) and reads
the OpGraph off it. Everything downstream (seeds, plans, tasks, tuning, the search) takes a
`PreparedModel`, so the three stay consistent: a plan made on this graph applies to this
legalized module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import tvm

from ago_search.frontend import ImportedModel
from ago_search.graph import OpGraph, build_opgraph, legalize
from ago_search.rewrite import RewriteReport, rewrite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    imported: ImportedModel
    target: tvm.target.Target
    mod: tvm.IRModule  # high-level Relax after rewriting
    legalized: tvm.IRModule
    graph: OpGraph
    rewrite_report: RewriteReport | None
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_model(
    imported: ImportedModel,
    target: tvm.target.Target,
    rewrite_rules: Sequence[str] | None = None,
    apply_rewrites: bool = True,
) -> PreparedModel:
    """Rewrite (all rules, or the ones named), legalize and build the OpGraph."""
    seconds: dict[str, float] = {}
    mod, report = imported.mod, None
    if apply_rewrites:
        start = time.perf_counter()
        mod, report = rewrite(imported.mod, rules=rewrite_rules)
        seconds["rewrite"] = time.perf_counter() - start
        log.info("rewrites: %d -> %d operator bindings", report.ops_before, report.ops_after)
    start = time.perf_counter()
    legalized = legalize(mod, target)
    seconds["legalize"] = time.perf_counter() - start
    start = time.perf_counter()
    graph = build_opgraph(mod, target=target, legalized=legalized)
    seconds["opgraph"] = time.perf_counter() - start
    return PreparedModel(imported, target, mod, legalized, graph, report, seconds)


SEED_NAMES = ("tvm", "dnnfusion", "intensive")


def seed_partition(prepared: PreparedModel, name: str, cache_bytes: int | None = None):
    """One of the seed partitions (`SEED_NAMES`) of a prepared model, as a `SeedResult`.

    `intensive` fuses several complex ops while the group's working set fits `cache_bytes`
    (default: this host's L2, `host_cache_bytes()`).
    """
    from ago_search.errors import AgoSearchError
    from ago_search.graph import tvm_default_groups
    from ago_search.partition import dnnfusion_seed, host_cache_bytes, intensive_seed, tvm_seed

    graph = prepared.graph
    if name == "tvm":
        default = tvm_default_groups(
            prepared.mod, prepared.target, graph=graph, legalized=prepared.legalized
        )
        return tvm_seed(graph, default)
    if name == "dnnfusion":
        return dnnfusion_seed(graph)
    if name == "intensive":
        budget = cache_bytes if cache_bytes is not None else host_cache_bytes()
        return intensive_seed(graph, cache_bytes=budget)
    raise AgoSearchError(f"unknown seed plan '{name}': choose one of {', '.join(SEED_NAMES)}")
