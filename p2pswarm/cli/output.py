"""Output helpers for the CLI: aligned tables, JSON, and one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

import click


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, like `docker node ls`."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


def remove_each(client: Any, names: Iterable[str], path_of: Any) -> int:
    """``DELETE`` each name's path in order, echoing each name once removed (``docker … rm`` style); the
    first refusal stops with its one-line error, the names before it stay removed."""
    for name in names:
        client.request("DELETE", path_of(name))
        click.echo(name)
    return 0


def fmt_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def fmt_rtt(rtt_ms: float | None) -> str:
    if rtt_ms is None:
        return "-"
    return f"{rtt_ms:.1f}ms" if rtt_ms < 100 else f"{rtt_ms:.0f}ms"


def one_line(message: Any) -> str:
    text = " ".join(str(message).split("\n")).strip()
    return text or "unknown error"


def error(message: Any) -> None:
    click.echo(f"error: {one_line(message)}", err=True)


_last_progress = [""]


def progress(message: str) -> None:
    """A progress line on stderr that the next one overwrites when stderr is a terminal.

    Elsewhere (logs, CI) only changes are printed, one per line.
    """
    if sys.stderr.isatty():
        click.echo(f"\r\x1b[K{message}", err=True, nl=False)
    elif message != _last_progress[0]:
        click.echo(message, err=True)
    _last_progress[0] = message


def end_progress() -> None:
    if sys.stderr.isatty():
        click.echo("\r\x1b[K", err=True, nl=False)
