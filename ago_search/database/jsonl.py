"""The datasets/ trace format: a tuning database as JSON lines (format 1, datasets/README.md).

One JSON object per line, usually gzip-compressed (`.jsonl.gz`):

- first a header: {"kind": "header", "format": 1, "producer": ..., "created_at": ...};
- per task, once, before its records: {"kind": "task", "task_key", "target", "name",
  "workload": {"hash": <structural hash, decimal string>, "mod": <tvm.ir.save_json text>}
  or null};
- per measurement: {"kind": "record", ...`Record.to_json()`}.

A reader skips kinds it does not know and refuses a format newer than its own. Files may be
concatenated (several headers; gzip members concatenate too).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ago_search.database.records import Record
from ago_search.database.store import DatabaseError

if TYPE_CHECKING:
    from ago_search.database.store import TuningDatabase

__all__ = ["FORMAT_VERSION", "export_jsonl", "import_jsonl", "read_jsonl"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_BATCH = 1000


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def export_jsonl(
    db: TuningDatabase,
    path: str | os.PathLike[str],
    device_key: str | None = None,
    compress: bool = True,
    where: Callable[[Record], bool] | None = None,
) -> int:
    """Write the records of `db` (of one device, or all; those `where` accepts, if given) to
    `path`; how many were written.

    The file appears complete or not at all (written beside, then renamed).
    """
    import tvm

    from ago_search import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    written = 0
    try:
        with _open_write(Path(tmp_name), compress) as out:
            header = {
                "kind": "header",
                "format": FORMAT_VERSION,
                "producer": f"ago-search {__version__}",
                "created_at": time.time(),
                "device_key": device_key,
            }
            out.write(_dumps(header) + "\n")
            for task in db.tasks(device_key):
                records = db.records(task.task_key, device_key)
                if where is not None:
                    records = [r for r in records if where(r)]
                if not records:
                    continue
                mod = db.workload(task.task_key)
                workload = None
                if mod is not None:
                    workload = {"hash": str(task.workload_hash), "mod": tvm.ir.save_json(mod)}
                task_line = {
                    "kind": "task",
                    "task_key": task.task_key,
                    "target": json.loads(task.target),
                    "name": task.name,
                    "workload": workload,
                }
                out.write(_dumps(task_line) + "\n")
                for record in records:
                    out.write(_dumps({"kind": "record", **record.to_json()}) + "\n")
                    written += 1
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("exported %d records to %s", written, path)
    return written


def _open_write(path: Path, compress: bool) -> IO[str]:
    if compress:
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
    return open(path, "w", encoding="utf-8")  # noqa: SIM115 - returned to a with-block


def _open_read(path: Path) -> IO[str]:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - returned to a with-block


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The task and record lines of a trace file (gzip or plain), headers checked."""
    path = Path(path)
    if not path.exists():
        raise DatabaseError(f"no trace file at {path}: check the path")
    seen_header = False
    with _open_read(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatabaseError(
                    f"{path}:{number} is not JSON ({err}): is this a datasets/ trace file?"
                ) from err
            kind = obj.get("kind") if isinstance(obj, dict) else None
            if kind == "header":
                version = obj.get("format")
                if not isinstance(version, int) or version > FORMAT_VERSION:
                    raise DatabaseError(
                        f"{path}:{number}: trace format {version!r}, this ago-search reads "
                        f"format {FORMAT_VERSION} and older: upgrade ago-search"
                    )
                seen_header = True
                continue
            if not seen_header:
                raise DatabaseError(
                    f"{path}:{number}: no header line before the data: not a datasets/ trace "
                    "file (format 1 starts with a 'header' line)"
                )
            if kind in ("task", "record"):
                obj["_line"] = number
                yield obj
            else:
                log.debug("%s:%d: skipping a line of kind %r", path, number, kind)


def import_jsonl(db: TuningDatabase, path: str | os.PathLike[str]) -> int:
    """Add the tasks and records of a trace file to `db`; how many records were new."""
    import tvm
    import tvm_ffi

    added = 0
    batch: list[Record] = []
    for obj in read_jsonl(path):
        number = obj.pop("_line")
        try:
            if obj["kind"] == "task":
                added += db.commit_records(batch)
                batch = []
                mod = None
                workload = obj.get("workload")
                if workload is not None:
                    mod = tvm.ir.load_json(workload["mod"])
                    shash = int(tvm_ffi.structural_hash(mod))
                    if str(shash) != str(workload.get("hash")):
                        log.warning(
                            "%s:%d: task %s has structural hash %d here, %s in the file "
                            "(another TVM version?)",
                            path,
                            number,
                            obj["task_key"],
                            shash,
                            workload.get("hash"),
                        )
                db.commit_task(obj["task_key"], obj["target"], mod, obj.get("name"))
            else:
                batch.append(Record.from_json(obj))
                if len(batch) >= _BATCH:
                    added += db.commit_records(batch)
                    batch = []
        except (KeyError, TypeError, ValueError) as err:
            raise DatabaseError(
                f"{path}:{number}: malformed {obj.get('kind')} line: {err}"
            ) from err
    added += db.commit_records(batch)
    log.info("imported %d new records from %s", added, path)
    return added
