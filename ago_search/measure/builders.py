"""Builders: MetaSchedule candidates (scheduled IRModules) to loadable libraries.

Both builders are MetaSchedule `PyBuilder`s, so `ms.tune_tir(..., builder=...)` and our own
search use them alike.

- `LocalBuilder` compiles in a few persistent subprocesses (`IsolatedWorker`), each build with
  a time-out. MetaSchedule's own LocalBuilder starts a fresh process pool every round and its
  build function imports `tvm.s_tir.tensor_intrin` there (about 29 s on 2 cores), which runs
  into its 30 s time-out; ours imports TVM once per worker and never that module (schedules
  arrive already tensorized, the build needs no intrinsic registry).
- `RayBuilder` spreads builds over Ray workers; modules travel as `tvm.ir.save_json` text.

Every build holds the host's cores' lease shared (`lease.host_cpu_lease`): builds run side
by side, but never during a measurement on the same cores.

Libraries are always exported as shared objects (`.so`), linked here: with the host's
compiler for a local device, with the profile's cross compiler for a device over RPC, whose
RPC server then needs no compiler to load them.

A failed build is a `BuilderResult` with an error text; why it failed (`Status.TIMEOUT` for a
build past its time-out, else `Status.BUILD_ERROR`) the builder keeps beside it
(`status.ResultStatuses`) and tells a measure callback through `status_of(result)`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

from ago_search.database.records import Status
from ago_search.measure.lease import host_cpu_lease
from ago_search.measure.prepack import SIDECAR, weight_rewrites, write_rewrites
from ago_search.measure.status import ResultStatuses
from ago_search.measure.worker import IsolatedWorker, WorkerCrashed, WorkerError, WorkerTimeout

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = [
    "DEFAULT_BUILD_TIMEOUT",
    "LocalBuilder",
    "RayBuilder",
    "build_artifact",
    "compile_candidate",
    "export_candidate",
]

log = logging.getLogger(__name__)

# One compile in a few hundred took 102 s on 2 cores (TVM_NOTES.md): a candidate that slow is
# not worth having, and a hung compile must not hold up the search.
DEFAULT_BUILD_TIMEOUT = 60.0


def compile_candidate(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    """MetaSchedule's default build, minus its `import tvm.s_tir.tensor_intrin`."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def export_candidate(
    rt_mod: tvm.runtime.Module, artifact_dir: str | Path, cross_compiler: str | None = None
) -> str:
    """Write `rt_mod` as a uniquely named .so in a folder of its own in artifact_dir; its path.

    One folder per library, because MetaSchedule's RemoveBuildArtifact callback deletes the
    folder of each artifact it is done with. cross_compiler: a compiler command
    ("aarch64-linux-gnu-g++") linking for the device; None links with the host's compiler.
    """
    path = _new_artifact_path(artifact_dir)
    if cross_compiler is None:
        rt_mod.export_library(str(path))
    else:
        from tvm.support import cc

        rt_mod.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))
    return str(path)


def _new_artifact_path(artifact_dir: str | Path) -> Path:
    name = f"candidate-{uuid.uuid4().hex}"
    folder = Path(artifact_dir) / name
    folder.mkdir(parents=True)
    return folder / f"{name}.so"


def build_artifact(
    mod_json: str,
    target: dict[str, Any],
    artifact_dir: str,
    cross_compiler: str | None = None,
) -> str:
    """Compile and export one candidate given as save_json text; the library's path. The
    weights it takes packed are written beside it (`prepack.SIDECAR`).

    The entry point of builder workers: everything it takes is plain data.
    """
    started = time.perf_counter()
    mod = tvm.ir.load_json(mod_json)
    rt_mod = compile_candidate(mod, tvm.target.Target(target))
    path = export_candidate(rt_mod, artifact_dir, cross_compiler)
    # the weights the candidate takes packed, for the check (`prepack`)
    write_rewrites(Path(path).parent, weight_rewrites(mod))
    log.debug("built %s in %.3f s", path, time.perf_counter() - started)
    return path


def _target_config(target: tvm.target.Target) -> dict[str, Any]:
    return dict(target.export())


def _artifact_dir(artifact_dir: str | Path | None, owner: object) -> Path:
    if artifact_dir is not None:
        path = Path(artifact_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="ago-artifacts-"))
    # Artifacts of a builder nobody named a folder for go away with the builder.
    weakref.finalize(owner, shutil.rmtree, str(path), ignore_errors=True)
    return path


@derived_object
class LocalBuilder(PyBuilder):
    """Builds candidates in `max_workers` persistent subprocesses, each with a time-out.

    cross_compiler: link with this compiler (a device over RPC); None: the host's.
    artifact_dir: where libraries go (default: a temporary folder removed with the builder).
    lease_dir: where the host's lease lives (default: lease.default_lease_dir()).
    """

    def __init__(
        self,
        *,
        cross_compiler: str | None = None,
        max_workers: int | None = None,
        timeout_sec: float = DEFAULT_BUILD_TIMEOUT,
        artifact_dir: str | Path | None = None,
        lease_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if max_workers is None:
            from ago_search.devices import host_num_cores

            max_workers = host_num_cores()
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec}")
        self.cross_compiler = cross_compiler
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.artifact_dir = _artifact_dir(artifact_dir, self)
        self.lease = host_cpu_lease(lease_dir)
        self.statuses = ResultStatuses()
        self._idle: queue.SimpleQueue[IsolatedWorker] = queue.SimpleQueue()
        self._workers = [
            IsolatedWorker(preload=(__name__,), name=f"builder-{i}") for i in range(max_workers)
        ]
        for worker in self._workers:
            self._idle.put(worker)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="ago-build"
        )
        weakref.finalize(self, _close_workers, self._workers, self._threads)

    @classmethod
    def for_device(cls, profile: DeviceProfile, **kwargs: Any) -> LocalBuilder:
        """A builder linking with the profile's cross compiler."""
        return cls(cross_compiler=profile.cross_compiler, **kwargs)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        jobs = [
            (tvm.ir.save_json(build_input.mod), _target_config(build_input.target))
            for build_input in build_inputs
        ]
        built = self._threads.map(lambda job: self._build_one(*job), jobs)
        return [self.statuses.remember(result, status) for result, status in built]

    def status_of(self, result: BuilderResult) -> Status | None:
        """Why a BuilderResult this builder returned failed (timeout or build_error); None if
        it did not (or is not one of this builder's)."""
        return self.statuses.status_of(result)

    def _build_one(self, mod_json: str, target: dict[str, Any]) -> tuple[BuilderResult, Status]:
        worker = self._idle.get()
        try:
            # Start-up (import tvm, seconds of CPU) and the build are work on the host's cores.
            with self.lease.shared():
                try:
                    worker.ready()
                except (WorkerTimeout, WorkerCrashed) as err:
                    error = f"LocalBuilder: the build worker did not start: {err}"
                    return BuilderResult(None, error), Status.BUILD_ERROR
                path = worker.call(
                    f"{__name__}:build_artifact",
                    mod_json,
                    target,
                    str(self.artifact_dir),
                    self.cross_compiler,
                    timeout=self.timeout_sec,
                )
            return BuilderResult(path, None), Status.OK
        except WorkerTimeout:
            error = f"LocalBuilder: timeout, killed after {self.timeout_sec} s"
            return BuilderResult(None, error), Status.TIMEOUT
        except WorkerError as err:
            return BuilderResult(None, f"LocalBuilder: build failed\n{err}"), Status.BUILD_ERROR
        except WorkerCrashed as err:
            return BuilderResult(None, f"LocalBuilder: build crashed: {err}"), Status.BUILD_ERROR
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the worker processes (the builder starts new ones if used again)."""
        _close_workers(self._workers, None)


def _close_workers(
    workers: Sequence[IsolatedWorker], threads: concurrent.futures.Executor | None
) -> None:
    for worker in workers:
        worker.close()
    if threads is not None:
        threads.shutdown(wait=False)


def ray_build_task(
    mod_json: str,
    target: dict[str, Any],
    artifact_dir: str,
    cross_compiler: str | None,
    lease_dir: str | None,
    driver_node_id: str,
) -> tuple[str, str | tuple[bytes, str | None]]:
    """A build on a Ray worker: ("path", path) on the driver's node, else ("bytes", (library,
    its `prepack.SIDECAR` text or None)).

    A library built on the driver's machine is written where the runner reads it; one built
    on another node comes back as bytes.
    """
    import ray

    same_node = ray.get_runtime_context().get_node_id() == driver_node_id
    with host_cpu_lease(lease_dir).shared():
        if same_node:
            return "path", build_artifact(mod_json, target, artifact_dir, cross_compiler)
        with tempfile.TemporaryDirectory(prefix="ago-ray-build-") as scratch:
            path = Path(build_artifact(mod_json, target, scratch, cross_compiler))
            sidecar = path.parent / SIDECAR
            rewrites = sidecar.read_text() if sidecar.is_file() else None
            return "bytes", (path.read_bytes(), rewrites)


_REMOTE_BUILD: Any = None


def _remote_build() -> Any:
    global _REMOTE_BUILD
    if _REMOTE_BUILD is None:
        import ray

        # No retries: a build that failed or was cancelled for its time-out is a record.
        _REMOTE_BUILD = ray.remote(num_cpus=1, max_retries=0)(ray_build_task)
    return _REMOTE_BUILD


@derived_object
class RayBuilder(PyBuilder):
    """Builds candidates as Ray tasks (one CPU each), each with a time-out.

    Uses the running Ray instance (`ray.init()` first, or it starts a local one). At most
    `max_in_flight` builds are submitted at once (default: the cluster's CPUs), so a build's
    time-out, counted from its submission, is spent building rather than queueing; the first
    build on a fresh Ray worker includes that worker's `import tvm`.
    """

    def __init__(
        self,
        *,
        cross_compiler: str | None = None,
        timeout_sec: float = DEFAULT_BUILD_TIMEOUT,
        max_in_flight: int | None = None,
        artifact_dir: str | Path | None = None,
        lease_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec}")
        self.cross_compiler = cross_compiler
        self.timeout_sec = timeout_sec
        self.max_in_flight = max_in_flight
        self.artifact_dir = _artifact_dir(artifact_dir, self)
        self.lease_dir = str(lease_dir) if lease_dir is not None else None
        self.statuses = ResultStatuses()

    @classmethod
    def for_device(cls, profile: DeviceProfile, **kwargs: Any) -> RayBuilder:
        """A builder linking with the profile's cross compiler."""
        return cls(cross_compiler=profile.cross_compiler, **kwargs)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        import ray

        if not ray.is_initialized():
            log.info("RayBuilder: no Ray instance running; starting a local one")
            ray.init()
        remote_build = _remote_build()
        driver_node = ray.get_runtime_context().get_node_id()
        in_flight_limit = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending = [
            (index, tvm.ir.save_json(item.mod), _target_config(item.target))
            for index, item in enumerate(build_inputs)
        ]
        pending.reverse()
        results: list[BuilderResult | None] = [None] * len(build_inputs)
        running: dict[Any, tuple[int, float]] = {}  # ref -> (index, deadline)
        while pending or running:
            while pending and len(running) < in_flight_limit:
                index, mod_json, target = pending.pop()
                ref = remote_build.remote(
                    mod_json,
                    target,
                    str(self.artifact_dir),
                    self.cross_compiler,
                    self.lease_dir,
                    driver_node,
                )
                running[ref] = (index, time.monotonic() + self.timeout_sec)
            next_deadline = min(deadline for _, deadline in running.values())
            wait = max(0.0, next_deadline - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait)
            for ref in ready:
                index, _ = running.pop(ref)
                results[index] = self._collect(ref)
            now = time.monotonic()
            for ref, (index, deadline) in list(running.items()):
                if deadline <= now:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    error = f"RayBuilder: timeout, cancelled after {self.timeout_sec} s"
                    results[index] = self.statuses.remember(
                        BuilderResult(None, error), Status.TIMEOUT
                    )
        return [result for result in results if result is not None]

    def status_of(self, result: BuilderResult) -> Status | None:
        """Why a BuilderResult this builder returned failed (timeout or build_error); None if
        it did not (or is not one of this builder's)."""
        return self.statuses.status_of(result)

    def _collect(self, ref: Any) -> BuilderResult:
        import ray

        try:
            kind, value = ray.get(ref)
        except Exception as err:  # a RayTaskError carries the build's traceback
            failed = BuilderResult(None, f"RayBuilder: build failed\n{err}")
            return self.statuses.remember(failed, Status.BUILD_ERROR)
        if kind == "path":
            return BuilderResult(str(value), None)
        library, rewrites = value
        path = _new_artifact_path(self.artifact_dir)
        path.write_bytes(library)
        os.chmod(path, 0o644)
        if rewrites is not None:
            (path.parent / SIDECAR).write_text(rewrites)
        return BuilderResult(str(path), None)
