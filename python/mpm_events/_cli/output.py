"""What the commands print: JSON lines when stdout is not a terminal (or with
``--json``), tables when it is and ``rich`` is installed (imported only then; without
it a terminal gets JSON lines too)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def wants_tables(args: Any) -> bool:
    """Tables: stdout is a terminal, no ``--json``, and ``rich`` can be imported."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def line(obj: Any) -> None:
    """One JSON line on stdout, flushed (a reader sees each event as it comes)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    """A table cell: text as is, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    """A ``rich`` table (call only when :func:`wants_tables`)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        # NOTE: rich would read "[...]" in payloads as markup; Text keeps them text.
        from rich.text import Text

        t.add_row(*(Text(cell(v)) for v in r))
    return t


def console() -> Any:
    """A ``rich`` console on stdout (call only when :func:`wants_tables`)."""
    from rich.console import Console

    return Console()
