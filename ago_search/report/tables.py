"""Tables: one markdown table, one plain-text table, and a README table replaced in place.

Cells are shown as given: numbers are formatted by the caller (tabulate's own number parsing
is off, so "0.500" stays "0.500"), None is an empty cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ago_search.errors import AgoSearchError

__all__ = ["markdown_table", "replace_table", "text_table"]

_ALIGN = {"<": "left", ">": "right", "^": "center"}


def _cells(rows: Iterable[Sequence[Any]]) -> list[list[str]]:
    return [["" if c is None else str(c) for c in row] for row in rows]


def _colalign(align: str | None, width: int) -> tuple[str, ...] | None:
    if align is None:
        return None
    if len(align) != width or set(align) - set(_ALIGN):
        raise ValueError(f"align {align!r}: one of '<', '>', '^' per column ({width})")
    return tuple(_ALIGN[a] for a in align)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub-flavoured markdown table: header, separator, one line per row. `align`: one
    of '<' '>' '^' per column (written into the separator as :--- / ---: / :---:)."""
    colalign = _colalign(align, len(headers))
    return tabulate(
        _cells(rows),
        headers=list(headers),
        tablefmt="pipe" if colalign else "github",
        colalign=colalign,
        disable_numparse=True,
    )


def text_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """A plain-text table for a terminal: header, a dashed rule under each column, the rows,
    columns two spaces apart. `align` as for `markdown_table` (default: every column left)."""
    # tabulate's "simple" format pads every header by two more characters; the header and
    # its rule as rows of a "plain" table keep each column as narrow as its widest cell.
    body = [list(map(str, headers)), *_cells(rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    body.insert(1, ["-" * w for w in widths])
    text = tabulate(
        body, tablefmt="plain", colalign=_colalign(align, len(headers)), disable_numparse=True
    )
    return "\n".join(line.rstrip() for line in text.splitlines())


def replace_table(readme: str | Path, start: str, end: str, table: str) -> None:
    """Write `table` between the marker lines `start` and `end` of `readme`, replacing what
    was there; the rest of the file is kept as it is."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except OSError as exc:
        raise AgoSearchError(f"{readme}: cannot read it ({exc.strerror})") from exc
    missing = [m for m in (start, end) if m not in text]
    if missing:
        raise AgoSearchError(
            f"{readme}: no {' or '.join(missing)} marker; put {start} and {end} on lines of "
            "their own where the table should go"
        )
    before, rest = text.split(start, 1)
    if end not in rest:
        raise AgoSearchError(f"{readme}: the marker {end} comes before {start}; swap them")
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{table}\n{end}{after}")
