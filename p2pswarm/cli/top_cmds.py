"""`p2pswarm top`: a live terminal view of the cluster, as the local node sees it.

One ``GET /v1/top`` per refresh (:mod:`p2pswarm.api.top_routes`): a header (cluster
id, leader, term, commit index, members by status), the nodes (address, status, Raft
role, RTT, tasks running/total, labels), the services (mode, replicas running/desired,
published ports, update state) and the tasks on each node.

No curses: the screen is redrawn in place with ANSI cursor moves on the alternate
screen, which works in any terminal emulator, over ssh and inside tmux or screen.
Keys are read in cbreak mode (``q`` quits, ``r`` refreshes now); Ctrl-C quits too,
and the terminal is restored however the command ends (also on SIGTERM and SIGHUP,
and around Ctrl-Z).  Fetching runs in a thread, so a node that hangs never freezes
the keys, and a node that goes away is reported on the first line while ``top``
keeps retrying and keeps the last data it had, marked with its age.

When stdout is not a terminal (a pipe, a file, a script), or with ``--once``,
``top`` prints one snapshot without escape codes and exits (1 if the node cannot be
reached).  Colours only on a terminal, and never with ``--no-color`` or ``NO_COLOR``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import threading
import time
from typing import Any, Iterable, Sequence

import click

from p2pswarm.api.client import ApiClient, ApiError
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import fmt_labels, fmt_rtt, one_line

DEFAULT_INTERVAL = 1.0
"""Seconds between refreshes."""
MIN_INTERVAL = 0.1
FETCH_TIMEOUT = 5.0
"""Seconds one request to the node may take before it counts as not reachable."""
KEY_POLL = 0.1
"""Seconds between checks for keys and window-size changes (the refresh itself runs in a thread)."""

ESC = "\x1b["
STYLES = {"red": "31", "yellow": "33", "green": "32", "bold": "1", "dim": "2", "head": "1;4"}
STATUS_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim", "unknown": "yellow"}
TASK_STYLE = {"running": "green", "new": "yellow", "assigned": "yellow", "preparing": "yellow",
              "starting": "yellow", "complete": "dim", "shutdown": "dim", "failed": "red", "rejected": "red",
              "orphaned": "red"}
UPDATE_STYLE = {"updating": "yellow", "rollback_started": "yellow", "paused": "red", "rollback_paused": "red",
                "rollback_completed": "yellow"}

Seg = tuple[str, "str | None"]
Line = list[Seg]


# ------------------------------------------------------------ rendering (pure)

def render(snapshot: dict[str, Any] | None, *, error: str | None = None, fetched_at: float | None = None,
           now: float | None = None, interval: float = DEFAULT_INTERVAL, width: int | None = None,
           height: int | None = None, color: bool = False, interactive: bool = False,
           source: str = "") -> str:
    """The screen for ``snapshot`` (a ``GET /v1/top`` answer) as text.

    ``error``: why the last refresh failed (the data shown is then the last good one,
    fetched at wall time ``fetched_at``). ``width``/``height``: cut lines and rows to
    fit (None: no limit). ``color``: ANSI colours. ``interactive``: show the keys.
    """
    now = time.time() if now is None else now
    lines: list[Line] = []
    if error is not None:
        lines.append([(f"node not reachable: {error} (retrying every {interval:g}s)", "red")])
        if snapshot is not None and fetched_at is not None:
            lines.append([(f"showing the last data, from {_clock(fetched_at)} ({max(0, now - fetched_at):.0f}s ago)",
                           "dim")])
    if snapshot is None:
        if error is None:
            lines.append([(f"connecting to the local node{' at ' + source if source else ''}...", "dim")])
        return _finish(lines, width, height, color)
    lines += _header(snapshot, now, interval, interactive, width)
    lines.append([])
    lines += _nodes(snapshot, width)
    lines.append([])
    lines += _services(snapshot)
    lines.append([])
    lines += _tasks(snapshot, width)
    return _finish(lines, width, height, color)


def _header(snap: dict[str, Any], now: float, interval: float, interactive: bool, width: int | None) -> list[Line]:
    me, cl = snap.get("node") or {}, snap.get("cluster")
    by_status = dict(me.get("members_by_status") or {})
    members: Line = [("members ", None)]
    for i, status in enumerate(("alive", "suspect", "dead")):
        count = by_status.get(status, 0)
        members += [(", " if i else "", None), (f"{count} {status}", STATUS_STYLE[status] if count else None)]
    if by_status.get("left"):
        members.append((f", {by_status['left']} left", None))
    if cl is None:
        first: Line = [("cluster -", "bold"), ("  no Raft group on this node yet  ", "yellow")]
    else:
        leader = cl.get("leader_name") or None
        first = [(f"cluster {cl.get('cluster_id') or '-'}", "bold"), ("  leader ", None),
                 (leader or "none", "bold" if leader else "red"), (f"  term {cl.get('term', '-')}"
                                                                  f"  commit {cl.get('commit_index', '-')}  ", None)]
    members.append((f"  {_clock(now)}", "dim"))
    out = [first + members]
    if width is not None and sum(len(t) for t, _ in out[0]) > width:  # narrow window: members on a line of their own
        out = [first, members]
    second = f"seen from {me.get('name', '?')}"
    if cl is not None:
        second += (f" | applied {cl.get('applied_index', '-')} | voters {cl.get('voters_alive', '?')}/"
                   f"{cl.get('voters', '?')} alive, learners {cl.get('learners', '?')}")
    second += f" | every {interval:g}s" + (" | q quits, r refreshes" if interactive else "")
    out.append([(second, "dim")])
    if me.get("leaving"):
        out.append([("this node is leaving the cluster", "yellow")])
    if cl is not None and cl.get("error"):
        out.append([(f"raft stopped on this node: {cl['error']}", "red")])
    return out


def _nodes(snap: dict[str, Any], width: int | None = None) -> list[Line]:
    rows = []
    for n in snap.get("nodes") or []:
        status = n.get("status") or "unknown"
        shown = status
        if status != "alive" and n.get("status_for_s") is not None:
            shown += f" {_age(n['status_for_s'])}"
        if n.get("availability") not in (None, "active"):
            shown += f" ({n['availability']})"
        running, total = n.get("tasks_running", 0), n.get("tasks_total", 0)
        role = n.get("role") or "-"
        rows.append([
            n.get("name", "?") + (" *" if n.get("self") else ""), n.get("id", "?"), n.get("addr") or "-",
            (shown, STATUS_STYLE.get(status, "yellow")), (role, "bold" if role == "leader" else None),
            "-" if n.get("self") else fmt_rtt(n.get("rtt_ms")),
            (f"{running}/{total}", None if running == total else "yellow"), fmt_labels(n.get("labels") or {}),
        ])
    headers = ("NAME", "ID", "ADDRESS", "STATUS", "ROLE", "RTT", "TASKS", "LABELS")
    for drop in ((), ("ID",), ("ID", "ADDRESS"), ("ID", "ADDRESS", "RTT")):  # narrow window: the least needed go
        keep = [i for i, h in enumerate(headers) if h not in drop]
        table = _table([headers[i] for i in keep], [[row[i] for i in keep] for row in rows])
        if width is None or _width(table[0][:-1]) + len("LABELS") <= width:
            break
    return [[(f"NODES ({len(rows)})", "bold")]] + table


def _width(line: Line) -> int:
    return sum(len(text) for text, _ in line)


def _services(snap: dict[str, Any]) -> list[Line]:
    services = snap.get("services") or []
    if not services:
        return [[("SERVICES", "bold")], [("no services (create one with `p2pswarm service create`)", "dim")]]
    rows = []
    for s in services:
        running, desired = s.get("running", 0), s.get("desired", 0)
        style = "green" if running >= desired else "red" if running == 0 else "yellow"
        state = s.get("update_state") or "-"
        if s.get("update_message") and state in ("paused", "rollback_paused", "rollback_started",
                                                 "rollback_completed"):
            state += f": {s['update_message']}"
        rows.append([s.get("name", "?"), s.get("mode", "?"), (f"{running}/{desired}", style),
                     ",".join(s.get("ports") or ()) or "-", (state, UPDATE_STYLE.get(s.get("update_state") or ""))])
    return [[(f"SERVICES ({len(rows)})", "bold")]] + _table(("NAME", "MODE", "REPLICAS", "PORTS", "UPDATE"), rows)


def _tasks(snap: dict[str, Any], width: int | None) -> list[Line]:
    groups = [(n.get("name", "?"), n.get("tasks") or []) for n in snap.get("nodes") or []]
    if snap.get("unassigned"):
        groups.append(("(not placed)", snap["unassigned"]))
    out: list[Line] = [[("TASKS PER NODE", "bold")]]
    pad = max((len(name) for name, _ in groups), default=0) + 2
    for name, tasks in groups:
        items: list[Line] = []
        for t in tasks:
            state = t.get("state", "?")
            text = f"{t.get('name', '?')} {state}"
            if t.get("port"):
                text += f" :{t['port']}"
            if t.get("health"):
                text += f" ({t['health']})"
            items.append([(text, TASK_STYLE.get(state))])
        if not items:
            items = [[("-", "dim")]]
        line: Line = [(name.ljust(pad), None)]
        used = pad
        for i, item in enumerate(items):
            size = sum(len(t) for t, _ in item) + (2 if i else 0)
            if width is not None and i and used + size > width - 1:
                out.append(line)
                line, used = [(" " * pad, None)], pad
                size -= 2
            elif i:
                line.append(("  ", None))
            line += item
            used += size
        out.append(line)
    return out


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[Line]:
    """Left-aligned columns two spaces apart; a cell is text or (text, style), widths from the text."""
    cells = [[(h, "head") for h in headers]] + [[c if isinstance(c, tuple) else (str(c), None) for c in row]
                                                for row in rows]
    widths = [max(len(r[i][0]) for r in cells) for i in range(len(headers))]
    out = []
    for row in cells:
        line: Line = []
        for i, (text, style) in enumerate(row):
            line.append((text, style))
            if i < len(row) - 1:
                line.append((" " * (widths[i] - len(text) + 2), None))
        out.append(line)
    return out


def _finish(lines: list[Line], width: int | None, height: int | None, color: bool) -> str:
    if height is not None and len(lines) > height:
        hidden = len(lines) - height + 1
        lines = lines[:height - 1] + [[(f"... {hidden} more lines (enlarge the window)", "dim")]]
    return "\n".join(_line_text(line, width, color).rstrip() for line in lines)


def _line_text(line: Line, width: int | None, color: bool) -> str:
    out, used = [], 0
    for text, style in line:
        if width is not None:
            text = text[:max(0, width - used)]
        if not text:
            continue
        used += len(text)
        out.append(f"{ESC}{STYLES[style]}m{text}{ESC}0m" if color and style else text)
    return "".join(out)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# ------------------------------------------------------------ the live loop

class Fetcher(threading.Thread):
    """Polls ``GET /v1/top`` every ``interval`` seconds and keeps the last answer and the last error."""

    def __init__(self, client: ApiClient, interval: float) -> None:
        super().__init__(name="p2pswarm-top-fetch", daemon=True)
        self.client, self.interval = client, interval
        self.lock = threading.Lock()
        self.snapshot: dict[str, Any] | None = None
        self.fetched_at: float | None = None
        self.error: str | None = None
        self.generation = 0
        self.wake = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                snapshot, error = self.client.get("/v1/top"), None
            except ApiError as exc:
                snapshot, error = None, describe(exc)
            except Exception as exc:  # never let the view die of a bad answer
                snapshot, error = None, one_line(f"{type(exc).__name__}: {exc}")
            with self.lock:
                if error is None:
                    self.snapshot, self.fetched_at = snapshot, time.time()
                self.error = error
                self.generation += 1
            self.wake.wait(self.interval)
            self.wake.clear()

    def state(self) -> tuple[int, dict | None, float | None, str | None]:
        with self.lock:
            return self.generation, self.snapshot, self.fetched_at, self.error


def describe(exc: ApiError) -> str:
    """The reason shown after "node not reachable: " (an error answer says that it is one)."""
    return one_line(exc) if exc.status is None else f"the node answered HTTP {exc.status}: {one_line(exc)}"


class Screen:
    """The terminal while ``top`` runs: alternate screen, hidden cursor, cbreak keys; restored on exit."""

    def __init__(self, out, keys) -> None:
        self.out, self.keys = out, keys
        self.saved = None
        self.active = False

    def __enter__(self) -> "Screen":
        self.enter()
        return self

    def __exit__(self, *exc) -> None:
        self.leave()

    def enter(self) -> None:
        if self.keys is not None:
            import termios
            import tty
            self.saved = termios.tcgetattr(self.keys)
            tty.setcbreak(self.keys)  # keeps ISIG: Ctrl-C still raises KeyboardInterrupt
        self.out.write(f"{ESC}?1049h{ESC}?25l{ESC}H{ESC}2J")
        self.out.flush()
        self.active = True

    def leave(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            self.out.write(f"{ESC}0m{ESC}?25h{ESC}?1049l")
            self.out.flush()
        finally:
            if self.saved is not None:
                import termios
                termios.tcsetattr(self.keys, termios.TCSADRAIN, self.saved)

    def draw(self, text: str) -> None:
        body = "\n".join(line + f"{ESC}K" for line in text.split("\n"))
        self.out.write(f"{ESC}H{body}{ESC}J")
        self.out.flush()

    def read_keys(self, timeout: float) -> str:
        if self.keys is None:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([self.keys], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self.keys, 64)
        if not data:  # the terminal is gone: behave as if q was pressed
            return "q"
        return data.decode("latin-1")


def window_size() -> os.terminal_size:
    """The terminal's size as the terminal reports it now (COLUMNS/LINES are stale after a resize)."""
    try:
        return os.get_terminal_size(sys.stdout.fileno())
    except (OSError, ValueError):
        return shutil.get_terminal_size()


def live(client: ApiClient, interval: float, color: bool, source: str) -> None:
    keys = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    fetcher = Fetcher(client, interval)
    screen = Screen(sys.stdout, keys)
    previous: dict[int, Any] = {}

    def stop(signum, frame):
        raise SystemExit(0)

    def suspend(signum, frame):  # Ctrl-Z: give the terminal back while stopped
        screen.leave()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)  # runs once we are continued
        screen.enter()
        drawn[0] = None

    drawn: list[Any] = [None]
    for sig, handler in ((signal.SIGTERM, stop), (signal.SIGHUP, stop), (signal.SIGTSTP, suspend)):
        previous[sig] = signal.signal(sig, handler)
    try:
        with screen:
            fetcher.start()
            while True:
                size = window_size()
                generation, snapshot, fetched_at, error = fetcher.state()
                key = (generation, size, int(time.time()) if error else None)
                if key != drawn[0]:
                    drawn[0] = key
                    screen.draw(render(snapshot, error=error, fetched_at=fetched_at, interval=interval,
                                       width=max(20, size.columns - 1), height=max(3, size.lines), color=color,
                                       interactive=keys is not None, source=source))
                pressed = screen.read_keys(KEY_POLL)
                if "q" in pressed or "Q" in pressed or "\x03" in pressed:
                    break
                if "r" in pressed or "R" in pressed:
                    fetcher.wake.set()
    except KeyboardInterrupt:
        pass
    finally:
        fetcher.stopped.set()
        fetcher.wake.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command()
@click.option("--interval", "-n", type=click.FloatRange(min=MIN_INTERVAL), default=DEFAULT_INTERVAL,
              show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (also what happens when stdout is not "
                                           "a terminal).")
@click.option("--no-color", is_flag=True, help="No colours (also with NO_COLOR set, or when not on a terminal).")
@data_dir_option
def top(interval, once, no_color, data_dir):
    """Live view of the cluster: nodes, Raft roles, services and tasks per node (q or Ctrl-C quits)."""
    datadir = _datadir(data_dir)
    client = ApiClient(datadir, timeout=FETCH_TIMEOUT)
    tty = sys.stdout.isatty()
    color = tty and not no_color and not os.environ.get("NO_COLOR")
    if once or not tty:
        try:
            snapshot = client.get("/v1/top")
        except ApiError as exc:
            raise click.ClickException(f"node not reachable: {describe(exc)}") from None
        click.echo(render(snapshot, interval=interval, color=color))
        return 0
    live(client, interval, color, str(datadir.path))
    return 0
