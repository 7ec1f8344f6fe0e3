"""Schedule-rule sets for a task's design space, by name.

MetaSchedule's default rules for CPUs (`ScheduleRule.create("llvm")`: inline, rfactor,
multi-level tiling with a fused write cache, parallelize/vectorize/unroll, random compute
location) were written for one complex op per kernel. On groups of several convs (AGO's
intensive fusion) their design space often fails to generate: a `ScheduleError` in
`reverse-compute-at` (the write cache of one conv moved under its tiles while the next conv's
padding reads a halo of it), seen on 2 of MobileNetV2's and 4 of SqueezeNet's multi-conv
groups; or it generates wrong code (TVM_NOTES.md: the second conv's padding moved into the
first conv's tiles). The variants here change only what touches that:

- "default": MetaSchedule's own (the target's; `"from-target"`);
- "no-write-fuse": multi-level tiling without the fused write cache (each complex op writes its
  whole output, then the next reads it, inside the one kernel);
- "no-compute-location": the default without `RandomComputeLocation`;
- "plain": both changes.

`space_generator(rules)` makes the post-order-apply space generator of one set. "auto" is no
set but a choice: the first set of `FALLBACK_ORDER` whose design space generates and samples
(`schedule.probe.sample_first_working`), what tuning and estimates use, so a group the default
rules refuse is tuned with the least change that works (`scripts/multi_complex_spaces.py` counts
which set samples the zoo's multi-complex groups).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AUTO",
    "FALLBACK_ORDER",
    "MULTI_COMPLEX_ORDER",
    "RULE_SETS",
    "rule_sets_to_try",
    "schedule_rules",
    "space_generator",
]

RULE_SETS = ("default", "no-write-fuse", "no-compute-location", "plain")
AUTO = "auto"
# the least change first: without the random compute location only, then without the fused
# write cache, then without both
FALLBACK_ORDER = ("default", "no-compute-location", "no-write-fuse", "plain")


# groups of two or more convs/matmuls: without the fused write cache first. Tried on a
# residual block as one group (two 3x3 convs, 8 random-guided candidates per set): default 7 of
# 8 wrong results, without the random compute location 5 of 8 wrong, without the fused write
# cache 8 of 8 right and the fastest (10.4 us against 12.7 and 17.9), both changes 8 right
MULTI_COMPLEX_ORDER = ("no-write-fuse", "plain", "default", "no-compute-location")


def rule_sets_to_try(name: str, complex_ops: int = 0) -> tuple[str, ...]:
    """The sets to try in order for `name` ("auto": `FALLBACK_ORDER`, or
    `MULTI_COMPLEX_ORDER` for a task of `complex_ops` >= 2; a set: itself)."""
    if name == AUTO:
        return MULTI_COMPLEX_ORDER if complex_ops >= 2 else FALLBACK_ORDER
    if name not in RULE_SETS:
        raise ValueError(
            f"unknown rule set {name!r}: choose {AUTO} or one of {', '.join(RULE_SETS)}"
        )
    return (name,)


def schedule_rules(name: str) -> list[Any] | None:
    """The rules of set `name` for CPU targets (None: the target's own, MetaSchedule's
    choice)."""
    from tvm.s_tir import meta_schedule as ms

    if name not in RULE_SETS:
        raise ValueError(f"unknown rule set {name!r}: choose one of {', '.join(RULE_SETS)}")
    if name == "default":
        return None
    rules = list(ms.schedule_rule.ScheduleRule.create("llvm"))
    if name in ("no-compute-location", "plain"):
        rules = [r for r in rules if not isinstance(r, ms.schedule_rule.RandomComputeLocation)]
    if name in ("no-write-fuse", "plain"):
        rules = [
            ms.schedule_rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64)
            if type(r) is ms.schedule_rule.MultiLevelTiling
            else r
            for r in rules
        ]
    return rules


def space_generator(name: str = "default") -> Any:
    """A post-order-apply space generator with the rule set `name` (postprocessors and
    mutators: the target's)."""
    from tvm.s_tir import meta_schedule as ms

    rules = schedule_rules(name)
    if rules is None:
        return "post-order-apply"
    return ms.space_generator.PostOrderApply(sch_rules=rules)
