"""Replace a generated table in the README between its start and end markers (the report
scripts' --readme)."""

from __future__ import annotations

from pathlib import Path


def replace_table(readme: Path, start: str, end: str, table: str) -> None:
    """Write `table` between the markers `start` and `end` of `readme`; exits with a message
    naming the file when the markers are missing."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: no {start} ... {end} markers")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{table}\n{end}{after}")
