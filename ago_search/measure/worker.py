"""A persistent subprocess that runs one function call at a time, with a time-out per call.

Builds and measurements run here, never in the tuning process: a kernel that segfaults, a
compile that never ends, or a library that aborts kills this subprocess, which the caller
sees as one failed call (`WorkerCrashed`, `WorkerTimeout`) while the tuning goes on. The
next call starts a fresh subprocess. The subprocess is kept between calls because starting
one costs seconds (`import tvm`); `max_uses=1` gives every call a fresh one.

The time-out is enforced by the parent, which kills the subprocess's whole process group: a
call stuck in native code holding the GIL (where a Python timer in the child could never
fire), and a compiler the call started, are both ended. Start-up (imports) is not counted in
a call's time-out; it has its own, `startup_timeout`. `memory_limit` caps the subprocess's
address space (RLIMIT_AS, set before its imports): past it an allocation fails, which ends
the call as a `WorkerError` (MemoryError, std::bad_alloc) or a `WorkerCrashed`, never the
machine's memory.

Calls name their function as "module:function" and pass picklable arguments, so the child
needs no pickled code, only the same installed packages.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["IsolatedWorker", "WorkerCallError", "WorkerCrashed", "WorkerError", "WorkerTimeout"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")
_READY = b"ready"
_STDERR_TAIL = 3000
_MEMORY_LIMIT_ENV = "AGO_WORKER_MEMORY_LIMIT"


class WorkerCallError(Exception):
    """A call in the worker did not return a result."""


class WorkerError(WorkerCallError):
    """The called function raised; the message holds the child's traceback."""


class WorkerCrashed(WorkerCallError):
    """The subprocess died during the call (a signal or an exit); the message says how."""


class WorkerTimeout(WorkerCallError):
    """The call did not end within its time-out; the subprocess was killed."""


def _write_message(stream: Any, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class IsolatedWorker:
    """One subprocess serving `call("module:function", *args, timeout=...)` requests.

    preload: modules the child imports before it reports ready (their import time is then
    start-up, not part of the first call's time-out). env: variables added to the child's
    environment (thread counts). max_uses: calls before the child is replaced (None: only
    after a crash or time-out). memory_limit: bytes of address space the child may map
    (None: no limit).
    """

    def __init__(
        self,
        preload: Sequence[str] = ("tvm",),
        env: Mapping[str, str] | None = None,
        max_uses: int | None = None,
        startup_timeout: float = 180.0,
        name: str = "worker",
        memory_limit: int | None = None,
    ):
        if max_uses is not None and max_uses < 1:
            raise ValueError(f"max_uses must be >= 1 or None, got {max_uses}")
        if memory_limit is not None and memory_limit < 1 << 20:
            raise ValueError(f"memory_limit is in bytes and must be >= 1 MiB, got {memory_limit}")
        self.memory_limit = memory_limit
        self.preload = tuple(preload)
        self.env = dict(env or {})
        self.max_uses = max_uses
        self.startup_timeout = startup_timeout
        self.name = name
        self._proc: subprocess.Popen | None = None
        self._reader = -1
        self._writer: Any = None
        self._ready = False
        self._uses = 0
        self._stderr_path: Path | None = None

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the subprocess now (calls start it on demand); returns before it is ready."""
        if self._proc is not None:
            return
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        stderr_fd, stderr_path = tempfile.mkstemp(prefix=f"ago-{self.name}-", suffix=".log")
        self._stderr_path = Path(stderr_path)
        env = {**os.environ, **self.env}
        # the child imports the same ago_search as this process, installed or not
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        if self.memory_limit is not None:
            env[_MEMORY_LIMIT_ENV] = str(self.memory_limit)
        command = [sys.executable, "-m", __name__, str(child_read), str(child_write)]
        command += list(self.preload)
        try:
            self._proc = subprocess.Popen(
                command,
                pass_fds=(child_read, child_write),
                stdin=subprocess.DEVNULL,
                stdout=stderr_fd,
                stderr=stderr_fd,
                env=env,
                start_new_session=True,  # its own process group: a kill reaches compilers too
            )
        finally:
            os.close(child_read)
            os.close(child_write)
            os.close(stderr_fd)
        self._reader = parent_read
        self._writer = os.fdopen(parent_write, "wb")
        self._ready = False
        self._uses = 0
        log.debug("%s: started pid %d", self.name, self._proc.pid)

    def close(self) -> None:
        """Stop the subprocess (and anything it started)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self._writer.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._reader)
        self._reader = -1
        if self._stderr_path is not None:
            with contextlib.suppress(OSError):
                self._stderr_path.unlink()
            self._stderr_path = None

    def stderr_tail(self) -> str:
        """The end of the child's stdout and stderr (its own log, TVM's messages)."""
        if self._stderr_path is None:
            return ""
        try:
            with self._stderr_path.open("rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - _STDERR_TAIL))
                return stream.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def _wait_readable(self, deadline: float) -> bool:
        remaining = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([self._reader], [], [], remaining)
        return bool(readable)

    def _receive(self, deadline: float) -> bytes:
        if not self._wait_readable(deadline):
            raise TimeoutError
        size = _HEADER.unpack(_read_exact(self._reader, _HEADER.size))[0]
        return _read_exact(self._reader, size)

    def _died(self, during: str) -> WorkerCrashed:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self.stderr_tail()
        self.close()
        message = f"{self.name} {_describe_exit(code)} during {during}"
        return WorkerCrashed(message + (f"; its last output:\n{tail}" if tail else ""))

    def ready(self) -> None:
        """Start the subprocess if needed and wait until it has done its imports."""
        if self._proc is not None and self.max_uses is not None and self._uses >= self.max_uses:
            self.close()
        self.start()
        if self._ready:
            return
        try:
            message = self._receive(time.monotonic() + self.startup_timeout)
        except EOFError:
            raise self._died("start-up") from None
        except TimeoutError:
            self.close()
            raise WorkerTimeout(
                f"{self.name} not ready after {self.startup_timeout:.0f} s"
            ) from None
        if message != _READY:
            self.close()
            raise WorkerCrashed(f"{self.name} sent {message[:80]!r} instead of ready")
        self._ready = True

    def call(self, function: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run `module:function(*args, **kwargs)` in the subprocess; its return value.

        Raises WorkerError (it raised), WorkerCrashed (the subprocess died) or WorkerTimeout
        (not done within `timeout` seconds, start-up excluded; the subprocess is killed).
        """
        self.ready()
        payload = pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_message(self._writer, payload)
        except (BrokenPipeError, OSError):
            raise self._died(f"the call of {function}") from None
        self._uses += 1
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        try:
            reply = self._receive(deadline)
        except EOFError:
            raise self._died(f"the call of {function}") from None
        except TimeoutError:
            self.close()
            raise WorkerTimeout(
                f"{function} did not finish in {timeout:.3g} s; {self.name} was killed"
            ) from None
        ok, value = pickle.loads(reply)
        if self.max_uses is not None and self._uses >= self.max_uses:
            self.close()
        if not ok:
            raise WorkerError(value)
        return value


def _limit_memory() -> None:
    limit = os.environ.pop(_MEMORY_LIMIT_ENV, None)
    if limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def _serve(read_fd: int, write_fd: int, preload: Sequence[str]) -> None:
    _limit_memory()
    writer = os.fdopen(write_fd, "wb")
    for module in preload:
        importlib.import_module(module)
    _write_message(writer, _READY)
    while True:
        try:
            header = _read_exact(read_fd, _HEADER.size)
        except EOFError:
            return  # the parent closed the pipe: done
        function, args, kwargs = pickle.loads(_read_exact(read_fd, _HEADER.unpack(header)[0]))
        try:
            module_name, _, attribute = function.partition(":")
            target = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
            reply = (True, target(*args, **kwargs))
        except BaseException as err:  # every failure, SystemExit too, goes back as a message
            reply = (False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        try:
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # an unpicklable return value
            payload = pickle.dumps((False, f"cannot send the result back: {err}"))
        _write_message(writer, payload)


if __name__ == "__main__":
    from ago_search._lazy import without_torch

    without_torch()  # no call a worker serves needs it: half of a worker's start-up
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
