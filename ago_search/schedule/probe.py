"""Bounded work per task: a task's design space generated and sampled under a memory and time
limit before anything tunes it.

MetaSchedule generates a task's design space, and samples and mutates schedules from it, in
the process that tunes. On a large fused group (tried: 20-31 ops with 4-6 convs) that work
grew to 23 GB and the kernel killed the process, with nothing recorded. So every task is
first probed in a worker subprocess (`measure.worker.IsolatedWorker`) with an address-space
limit and a time-out: its design space is generated and a few schedules are sampled from it
with their postprocessors applied. A task whose probe fails (a schedule rule's error, the
memory limit, the time-out) is not tuned; the caller says why, and the search gives it no
score, so a plan holding it never leads while smaller groups of the same ops do.

`sample_candidates` is the probe's work, also what the cost model's estimates sample
(`cost_model.sampling`). With the rule set "auto" (`schedule.rules`) the probe tries the rule
sets of `rules.FALLBACK_ORDER` in turn (`sample_first_working`) and says which one worked: the
set the task is tuned with. MetaSchedule's default rules raise a ScheduleError on most groups of
several convs (reverse-compute-at of a conv's write cache under its tiles while the next conv's
padding reads a halo of it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from ago_search.measure.worker import IsolatedWorker, WorkerCallError, WorkerTimeout

__all__ = [
    "TaskProbe",
    "as_target",
    "default_memory_limit",
    "failure_reason",
    "probe_task",
    "sample_candidates",
    "sample_first_working",
]

log = logging.getLogger(__name__)

# The least address space a probe worker gets: TVM and LLVM map ~1.5 GB at import.
_MIN_MEMORY_LIMIT = 4 << 30


def default_memory_limit() -> int:
    """Bytes of address space a task's probe may use: 40 % of the machine's memory, at least
    4 GiB (the worker's imports alone map ~1.5 GB)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30
    return max(_MIN_MEMORY_LIMIT, int(0.4 * physical))


def as_target(target: Any) -> Any:
    """A tvm Target from a Target, its JSON text or its string form."""
    import tvm

    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str) and target.lstrip().startswith("{"):
        target = json.loads(target)
    return tvm.target.Target(target)


def sample_candidates(
    mod: Any,
    target: Any,
    samples: int,
    seed: int = 0,
    num_threads: int = 1,
    rules: str = "default",
) -> tuple[Any, list[Any]]:
    """The task's design space (post-order-apply with the rule set `rules`,
    `schedule.rules`) and `samples` schedules replayed from it with random decisions and its
    postprocessors: (the TuneContext, the MeasureCandidates). Raises what MetaSchedule raises
    (a ScheduleError of a schedule rule)."""
    from tvm.s_tir import meta_schedule as ms

    from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics
    from ago_search.schedule.rules import space_generator

    target = as_target(target)
    register_cpu_tensor_intrinsics(target)  # else TuneContext imports every backend's: ~26 s
    context = ms.TuneContext(
        mod=mod,
        target=target,
        space_generator=space_generator(rules),
        search_strategy=ms.search_strategy.ReplayTrace(),
        task_name="probe",
        rand_state=seed,
        num_threads=num_threads,
    )
    spaces = context.generate_design_space()
    if samples <= 0:
        return context, []
    context.pre_tuning(
        max_trials=samples,
        num_trials_per_iter=samples,
        design_spaces=spaces,
        database=None,
        cost_model=None,
    )
    candidates = list(context.generate_measure_candidates() or [])
    context.post_tuning()
    return context, candidates


def sample_first_working(
    mod: Any,
    target: Any,
    samples: int,
    seed: int = 0,
    num_threads: int = 1,
    rules: str = "auto",
) -> tuple[str, Any, list[Any]]:
    """`sample_candidates` with each rule set of `rules.rule_sets_to_try(rules)` in turn until
    one generates its design space and samples a schedule: (the set, the TuneContext, the
    candidates). Raises a RuntimeError with every set's reason when none does."""
    from ago_search.schedule.rules import rule_sets_to_try
    from ago_search.schedule.tasks import count_complex_blocks

    complex_ops = count_complex_blocks(mod["main"]) if rules == "auto" else 0
    reasons = []
    for name in rule_sets_to_try(rules, complex_ops):
        try:
            context, candidates = sample_candidates(mod, target, samples, seed, num_threads, name)
        except MemoryError:
            raise  # the limit: another rule set would outgrow it the same way
        except Exception as err:  # noqa: BLE001 - a schedule rule's error: the next set
            text = str(err).strip()
            if "bad_alloc" in text or "Cannot allocate" in text:
                raise
            first = text.splitlines()[0] if text else repr(err)
            reasons.append(f"{name}: {first[:200]}")
            continue
        if candidates or samples <= 0:
            return name, context, candidates
        reasons.append(f"{name}: no valid schedule sampled")
    if len(reasons) == 1:
        raise RuntimeError(reasons[0].split(": ", 1)[1])
    raise RuntimeError("no rule set works: " + "; ".join(reasons))


def probe_task(
    mod: Any, target: str, samples: int, seed: int, num_threads: int, rules: str = "auto"
) -> tuple[int, str]:
    """What the probe worker runs: the design space and `samples` schedules of one task, with
    the first rule set that works (`sample_first_working`); (how many schedules came out, the
    rule set)."""
    name, _, candidates = sample_first_working(mod, target, samples, seed, num_threads, rules)
    return len(candidates), name


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""  # why not, for a person
    rules: str | None = None  # the rule set whose design space worked


class TaskProbe:
    """Probes tasks one at a time in a worker subprocess (kept between tasks; replaced after
    one that crashed or ran out of time).

    memory_limit: bytes of address space (None: `default_memory_limit()`); timeout_s: per
    task; samples: schedules sampled per task.
    """

    def __init__(
        self,
        memory_limit: int | None = None,
        timeout_s: float = 120.0,
        samples: int = 4,
        seed: int = 0,
    ) -> None:
        self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
        self.timeout_s = timeout_s
        self.samples = samples
        self.seed = seed
        self._worker = IsolatedWorker(
            preload=("tvm", __name__), name="task-probe", memory_limit=self.memory_limit
        )

    def __enter__(self) -> TaskProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._worker.close()

    def probe(
        self, mod: Any, target: Any, num_threads: int = 1, rules: str = "auto"
    ) -> ProbeResult:
        """Whether the task's design space (rule set `rules`; "auto": the first of
        `rules.FALLBACK_ORDER` that works) can be generated and sampled within the limits,
        and with which set."""
        try:
            count, used = self._worker.call(
                f"{__name__}:probe_task",
                mod,
                str(target),
                self.samples,
                self.seed,
                num_threads,
                rules,
                timeout=self.timeout_s,
            )
        except WorkerCallError as err:
            return ProbeResult(False, failure_reason(err, self.memory_limit, self.timeout_s))
        if count == 0 and self.samples > 0:
            return ProbeResult(False, "no valid schedule could be sampled from its design space")
        return ProbeResult(True, rules=used)


def failure_reason(err: WorkerCallError, memory_limit: int, timeout_s: float) -> str:
    """What a person reads of a bounded call that failed: the limit it hit, or its error."""
    gib = memory_limit / (1 << 30)
    if isinstance(err, WorkerTimeout):
        return f"its design space took over {timeout_s:.3g} s"
    text = str(err)
    lowered = text.lower()
    if "during start-up" in lowered:
        return f"the worker could not start within {gib:.2g} GiB: raise the task memory limit"
    if "memoryerror" in lowered or "bad_alloc" in lowered or "cannot allocate" in lowered:
        return f"its design space needs more than {gib:.2g} GiB"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # a WorkerError's text starts with the exception, a WorkerCrashed's with how it died
    return (lines[0] if lines else repr(err))[:300]
