"""Mathematical-property rewrites of a high-level Relax module (DNNFusion, arXiv 2108.13342).

`rewrite(mod)` runs on the module `ago_search.frontend.import_onnx` gives (high-level Relax
operators, weights as constants, static shapes), before `ago_search.graph.legalize` /
`build_opgraph`. It applies the rules of `RULES` (or the ones named) pass by pass until a
round changes nothing, and returns the new module with a `RewriteReport`: per rule, how many
times it fired and how many operator bindings its passes removed.

Every rule is a `Rule` with the property it relies on and its precondition; see
`describe_rules()` or each rule's definition (`basic.py`, `algebra.py`, `patterns.py`).
Floating-point reassociation changes results by rounding only; tests compare outputs within
1e-4 * max|reference| + 1e-5.
"""

from __future__ import annotations

from collections.abc import Iterable

import tvm

from ago_search.rewrite.algebra import (
    COMBINE_CONSTANT_CHAIN,
    DISTRIBUTE_COMMON_FACTOR,
    FOLD_BATCH_NORM,
    FOLD_SCALE_INTO_LINEAR,
    scale_expr,
)
from ago_search.rewrite.basic import (
    COMBINE_LAYOUT_OPS,
    ELIMINATE_IDENTITY,
    FOLD_CONSTANTS,
    STRENGTH_REDUCTION,
)
from ago_search.rewrite.core import (
    RewriteContext,
    RewriteReport,
    Rule,
    RuleStats,
    apply_rule,
    count_ops,
    op_histogram,
    remove_dead_code,
    resolve_rules,
    run_rules,
)
from ago_search.rewrite.patterns import CLIP_FROM_MIN_MAX, RECOGNIZE_GELU, RECOGNIZE_LAYER_NORM

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "RULES",
    "RewriteContext",
    "RewriteReport",
    "Rule",
    "RuleStats",
    "apply_rule",
    "count_ops",
    "describe_rules",
    "op_histogram",
    "remove_dead_code",
    "rewrite",
    "scale_expr",
]

DEFAULT_MAX_ROUNDS = 8

# Registry, in the order a round applies them: fold and clean first, so that the algebraic
# rules see constants and plain operators; patterns before the rules that absorb their
# neighbours (a recognized layer_norm's gamma/beta, a folded BN's bias).
RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        FOLD_CONSTANTS,
        ELIMINATE_IDENTITY,
        CLIP_FROM_MIN_MAX,
        COMBINE_LAYOUT_OPS,
        RECOGNIZE_LAYER_NORM,
        RECOGNIZE_GELU,
        STRENGTH_REDUCTION,
        FOLD_BATCH_NORM,
        FOLD_SCALE_INTO_LINEAR,
        COMBINE_CONSTANT_CHAIN,
        DISTRIBUTE_COMMON_FACTOR,
    )
}


def rewrite(
    mod: tvm.IRModule,
    rules: Iterable[str | Rule] | None = None,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
) -> tuple[tvm.IRModule, RewriteReport]:
    """Apply `rules` (names or Rule objects; default: all of RULES, in registry order) to
    every Relax function of `mod` until a round changes nothing (at most `max_rounds`).

    The input module is not modified.
    """
    return run_rules(mod, resolve_rules(rules, RULES), max_rounds)


def describe_rules(rules: Iterable[str | Rule] | None = None) -> list[dict[str, str]]:
    """Name, property, formula and precondition of each rule (JSON-able)."""
    return [r.describe() for r in resolve_rules(rules, RULES)]
