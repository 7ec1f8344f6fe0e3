"""Latency estimates of new tasks, computed on Ray while the driver measures.

Each worker is a Ray actor holding one `LatencyEstimator` (the GNN loaded once, its JIT warm).
The driver submits tasks and collects what is done between its own steps (`submit`, `poll`),
so proposing and scoring plans overlaps measuring. An estimate runs under the host's CPU lease
in shared mode (`ago_search.measure.lease`): it waits while a measurement holds the cores and
never disturbs one. On a Ray cluster (`--ray-address`) the actors spread over its nodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cost_model.estimate import LatencyEstimator, TaskEstimate

# tasks in flight per actor while unpaced (Ray runs an actor's calls in order; more than one
# keeps it busy between two polls)
UNPACED_IN_FLIGHT = 8

__all__ = ["EstimatorPool", "EstimatorWorker"]

log = logging.getLogger(__name__)


class EstimatorWorker:
    """What runs inside each actor (also usable in-process)."""

    def __init__(
        self, target: Any, predictor_dir: str | None, samples: int, seed: int, lease: bool
    ) -> None:
        from cost_model.predictor import Predictor

        predictor = Predictor.load(predictor_dir) if predictor_dir else None
        # sampling in a worker with a memory and time limit: a group whose design space
        # outgrows them costs its estimate, not this actor
        self.estimator = LatencyEstimator(
            target, predictor, samples=samples, seed=seed, isolated=True
        )
        self.lease = lease

    def estimate(self, key: str, mod: Any) -> tuple[str, dict[str, Any]]:
        if not self.lease:
            return key, self.estimator.estimate(mod).to_json()
        from ago_search.measure.lease import host_cpu_lease

        with host_cpu_lease().shared():
            return key, self.estimator.estimate(mod).to_json()

    def close(self) -> None:
        """Stop the sampling worker (and remove its log file)."""
        self.estimator.close()

    def node(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()


class EstimatorPool:
    """`workers` Ray actors estimating tasks for `target` (see the module docstring).

    predictor_dir: a saved GNN (default: the shipped pretrained one). lease: hold the host's
    CPU lease (shared) while estimating; off when the actors run on other machines' cores.
    """

    def __init__(
        self,
        target: Any,
        workers: int = 1,
        predictor_dir: str | None = None,
        samples: int = 64,
        seed: int = 0,
        lease: bool = True,
        share: float | None = None,
        head_start_s: float = 20.0,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("EstimatorPool needs ray.init() first")
        remote = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=0)(EstimatorWorker)
        target_json = str(target)
        self._actors = [
            remote.remote(target_json, predictor_dir, samples, seed, lease) for _ in range(workers)
        ]
        self._next = 0
        self._running: dict[Any, str] = {}  # object ref -> task key
        self._backlog: list[tuple[str, Any]] = []  # submitted, not handed to an actor yet
        self._submitted: set[str] = set()
        self.share = share
        self.head_start_s = head_start_s
        self._started = time.monotonic()
        self.seconds = 0.0
        self.done = 0
        # estimate seconds that count against the pace: of the tasks handed out since `pace`
        # (those handed out unpaced before, still running, do not)
        self._paced_seconds = 0.0
        self._unpaced: set[Any] = set()

    def pace(self, share: float | None) -> None:
        """Pace the estimates from now on to `share` of the wall time (None: as fast as the
        actors go); what was estimated before does not count against it. The search lets
        its seeds' estimates go unpaced (they decide the first leader, and an actor's first
        estimate holds the GNN's compile) and paces the rest once a plan is being tuned."""
        self.share = share
        self._started = time.monotonic()
        self._paced_seconds = 0.0
        self._dispatch()

    def submit(self, tasks: Mapping[str, Any]) -> int:
        """Queue tasks (key -> Task.mod) not submitted before; how many were new. They go to
        the actors as `share` allows (see `_dispatch`)."""
        new = 0
        for key, mod in tasks.items():
            if key in self._submitted:
                continue
            self._submitted.add(key)
            self._backlog.append((key, mod))
            new += 1
        self._dispatch()
        return new

    def _dispatch(self, force: bool = False) -> None:
        """Hand queued tasks to the actors, one in flight per actor, while the estimates' CPU
        time so far is within `share` of the wall time since the pool started (plus a head
        start). On 2 cores every estimate slows the tuning beside it: ResNet-18's first pass
        ran 27 % fewer trials than tune-tasks' while its three seeds' tasks were estimated."""
        while self._backlog:
            in_flight = 1 if self.share is not None else UNPACED_IN_FLIGHT
            if len(self._running) >= in_flight * len(self._actors):
                # paced: one in flight per actor; unpaced a few, so the backlog's order (what
                # `prioritize` moved up) still counts
                return
            if not force and self.over_share():
                return
            key, mod = self._backlog.pop(0)
            actor = self._actors[self._next % len(self._actors)]
            self._next += 1
            ref = actor.estimate.remote(key, mod)
            self._running[ref] = key
            if self.share is None:
                self._unpaced.add(ref)

    def prioritize(self, keys: Iterable[str]) -> None:
        """Estimate these tasks (submitted, not handed out yet) before the rest of the queue:
        the explored tasks, whose estimates calibrate their layouts before the first leader."""
        first = set(keys)
        self._backlog.sort(key=lambda item: item[0] not in first)  # stable: order kept

    def over_share(self) -> bool:
        """Whether the estimates since `pace` took more CPU time than the share allows now
        (False while unpaced)."""
        if self.share is None:
            return False
        allowed = self.share * (time.monotonic() - self._started) + self.head_start_s
        return self._paced_seconds > allowed

    def nodes(self) -> set[str]:
        """The Ray nodes the actors run on."""
        import ray

        return set(ray.get([actor.node.remote() for actor in self._actors]))

    @property
    def workers(self) -> int:
        return len(self._actors)

    @property
    def pending(self) -> int:
        """Tasks submitted and not estimated yet (in flight or queued)."""
        return len(self._running) + len(self._backlog)

    def poll(self, timeout: float = 0.0, force: bool = False) -> dict[str, TaskEstimate]:
        """The estimates finished by now (waiting up to `timeout` s for the first one); queued
        tasks go out as the share allows (`force`: regardless)."""
        import ray

        out: dict[str, TaskEstimate] = {}
        self._dispatch(force)
        if not self._running:
            return out
        refs = list(self._running)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            key = self._running.pop(ref)
            try:
                _, data = ray.get(ref)
                estimate = TaskEstimate.from_json(data)
            except Exception as exc:  # noqa: BLE001 - a lost actor costs an estimate, not the search
                log.warning("the estimate of task %s failed: %s", key, exc)
                estimate = TaskEstimate(None, None, 0, 0.0, f"estimator failed: {exc}")
            self.seconds += estimate.seconds
            if ref in self._unpaced:
                self._unpaced.discard(ref)
            else:
                self._paced_seconds += estimate.seconds
            self.done += 1
            out[key] = estimate
        self._dispatch(force)
        return out

    def drain(self, timeout: float) -> dict[str, TaskEstimate]:
        """Everything submitted, waiting up to `timeout` s in all."""
        out: dict[str, TaskEstimate] = {}
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            out.update(self.poll(timeout=max(0.0, deadline - time.monotonic()), force=True))
        return out

    def close(self) -> None:
        import ray

        # the actors stop their sampling workers first (a killed actor leaves its worker's
        # log file behind); an actor busy past the wait is killed all the same
        closing = [actor.close.remote() for actor in self._actors]
        with contextlib.suppress(Exception):
            ray.wait(closing, num_returns=len(closing), timeout=5.0)
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._running = [], {}
