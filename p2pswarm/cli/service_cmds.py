"""`p2pswarm service ...` and `p2pswarm node update`: services in the spirit of `docker service`.

The CLI builds and checks the spec itself (a bad flag is one line from SpecError
before anything is sent), the node checks it again, and the cluster state machine
has the last word (e.g. a port another service publishes).  While a create,
update or scale converges the CLI shows `docker service create`'s progress: the
overall count of running tasks, then a short verify phase; `--detach` skips it.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
import urllib.parse

import click

from p2pswarm.api.client import ApiClient
from p2pswarm.cli.node_cmds import _datadir, data_dir_option
from p2pswarm.cli.output import remove_each, table, to_json
from p2pswarm.cluster.spec import (
    Constraint,
    FileRef,
    HealthCheck,
    Mount,
    ServiceSpec,
    parse_duration,
    parse_memory,
    parse_port,
)

API_TIMEOUT = 60.0
"""Seconds the CLI waits for one answer (the node's own write timeout is shorter)."""
CONVERGE_TIMEOUT = 300.0
"""Seconds the progress display waits for a service to converge before giving up (the service keeps going)."""
POLL = 0.2


def _client(data_dir) -> ApiClient:
    return ApiClient(_datadir(data_dir), timeout=API_TIMEOUT)


def _path(name: str, *rest: str) -> str:
    return "/".join(["/v1/services", urllib.parse.quote(name, safe=""), *rest])


# ------------------------------------------------------------ spec flags (shared by create and update)

def spec_options(fn):
    opts = [
        click.option("--replicas", type=int, help="Number of tasks (replicated mode)."),
        click.option("--mode", type=click.Choice(["replicated", "global"]), help="global: one task per node."),
        click.option("--publish", "-p", multiple=True,
                     help="Published port, e.g. 8080, 8080:80, 5353:53/udp; options after a comma: proxy-protocol "
                          "(PROXY v2 header to the task), encrypted (TLS between nodes' meshes), userspace (never the "
                          "kernel path: failed connects retried on another replica); or Docker's long "
                          "syntax published=8080,target=80,protocol=tcp,mode=host (served by the task's node only, "
                          "not the mesh). A fixed target is a process's $PORT, a container's port (repeatable)."),
        click.option("--env", "-e", multiple=True, help="K=V environment variable (repeatable; update merges)."),
        click.option("--workdir", help="Working directory of the task (absolute)."),
        click.option("--constraint", multiple=True,
                     help="e.g. node.labels.zone==a, node.name!=n1, node.engine==docker, node.isolation!=none "
                          "(repeatable)."),
        click.option("--placement-pref", help="spread=node.labels.KEY"),
        click.option("--reserve-cpu", type=float, help="Cores reserved per task."),
        click.option("--reserve-memory", help="Memory reserved per task, e.g. 256M."),
        click.option("--restart-condition", type=click.Choice(["any", "on-failure", "none"])),
        click.option("--restart-delay", help="Delay before a restart, e.g. 5s."),
        click.option("--restart-max-attempts", type=int, help="Restarts within the window (0: no limit)."),
        click.option("--restart-window", help="Window for --restart-max-attempts, e.g. 1m."),
        click.option("--update-parallelism", type=int, help="Tasks updated at once (0: all)."),
        click.option("--update-delay", help="Delay between update batches."),
        click.option("--update-failure-action", type=click.Choice(["pause", "continue", "rollback"])),
        click.option("--update-order", type=click.Choice(["stop-first", "start-first"])),
        click.option("--update-monitor", help="How long a new task is watched for failure."),
        click.option("--health-cmd", help="Exec health check command (shell words)."),
        click.option("--health-http", help="HTTP health check path, e.g. /health."),
        click.option("--health-tcp", is_flag=True, default=False, help="TCP connect health check."),
        click.option("--health-interval"), click.option("--health-timeout"),
        click.option("--health-retries", type=int), click.option("--health-start-period"),
        click.option("--image", help="Run tasks as containers of IMAGE on the nodes' Docker Engine (pulled on first "
                                     "use); COMMAND is then optional."),
        click.option("--network", type=click.Choice(["host", "bridge"]),
                     help="Containers: bridge (default; each target port mapped to a dynamic host port) or host."),
        click.option("--user", "-u", help="User tasks run as (name or uid[:gid]); default: the node's task user."),
        click.option("--limit-cpu", type=float, help="Cores a task may use at most (enforced)."),
        click.option("--limit-memory", help="Memory a task may use at most, e.g. 256M (the kernel kills above it)."),
        click.option("--limit-pids", type=int, help="Processes a task may have at once."),
        click.option("--stop-signal", help="Signal that asks a task to stop (default SIGTERM)."),
        click.option("--stop-grace-period", help="Time between the stop signal and SIGKILL (default 10s)."),
        click.option("--log-retention", help="How long an ended task's logs stay readable, e.g. 1h (the default)."),
        click.option("--mount", multiple=True,
                     help="type=bind|volume,source=SRC,target=/PATH[,readonly] (repeatable; update replaces all)."),
        click.option("--secret", multiple=True,
                     help="NAME or source=NAME,target=FILE,mode=0400 (repeatable; update replaces all)."),
        click.option("--config", "config_refs", multiple=True,
                     help="NAME or source=NAME,target=/PATH,mode=0444 (repeatable; update replaces all)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected K=V, got {value!r}", param_hint=flag)
        out[key] = val
    return out


def _sub(obj, prefix: str, names: dict, durations: tuple[str, ...] = ()):
    """``obj`` with the given (not None) fields replaced; durations parsed as such."""
    changes = {}
    for field, value in names.items():
        if value is not None:
            changes[field] = parse_duration(value, f"{prefix}.{field}") if field in durations else value
    return dataclasses.replace(obj, **changes) if changes else obj


def apply_flags(spec: ServiceSpec, o: dict) -> ServiceSpec:
    """``spec`` with the flags the user gave applied (raises SpecError / BadParameter with one line)."""
    changes: dict = {}
    for field in ("replicas", "mode", "workdir", "reserve_cpu", "image", "network", "user", "limit_cpu",
                  "limit_pids", "stop_signal"):
        if o[field] is not None:
            changes[field] = o[field]
    if o["limit_memory"] is not None:
        changes["limit_memory"] = parse_memory(o["limit_memory"], "limit_memory")
    if o["stop_grace_period"] is not None:
        changes["stop_grace"] = parse_duration(o["stop_grace_period"], "stop_grace")
    if o.get("log_retention") is not None:  # callers that build ``o`` themselves may leave it out
        changes["log_retention"] = parse_duration(o["log_retention"], "log_retention")
    for field, values, parse in (("mounts", o["mount"], Mount.parse),
                                 ("secrets", o["secret"], lambda v: FileRef.parse(v, "secret")),
                                 ("configs", o["config_refs"], lambda v: FileRef.parse(v, "config"))):
        if values:
            changes[field] = tuple(parse(v) for v in values)
    if o["publish"]:
        changes["ports"] = tuple(parse_port(p) for p in o["publish"])
    if o["env"]:
        changes["env"] = tuple(sorted({**dict(spec.env), **_pairs(o["env"], "--env")}.items()))
    if o["constraint"]:
        changes["constraints"] = tuple(Constraint.parse(c) for c in o["constraint"])
    if o["placement_pref"] is not None:
        key, sep, value = o["placement_pref"].partition("=")
        if key != "spread" or not sep:
            raise click.BadParameter("expected spread=node.labels.KEY", param_hint="--placement-pref")
        changes["spread"] = value
    if o["reserve_memory"] is not None:
        changes["reserve_memory"] = parse_memory(o["reserve_memory"])
    changes["restart"] = _sub(spec.restart, "restart", {
        "condition": o["restart_condition"], "delay": o["restart_delay"], "max_attempts": o["restart_max_attempts"],
        "window": o["restart_window"]}, ("delay", "window"))
    changes["update"] = _sub(spec.update, "update", {
        "parallelism": o["update_parallelism"], "delay": o["update_delay"],
        "failure_action": o["update_failure_action"], "order": o["update_order"], "monitor": o["update_monitor"]},
        ("delay", "monitor"))
    kinds = [k for k, v in (("exec", o["health_cmd"]), ("http", o["health_http"]), ("tcp", o["health_tcp"] or None))
             if v is not None]
    if len(kinds) > 1:
        raise click.UsageError("give at most one of --health-cmd, --health-http, --health-tcp")
    health = spec.health
    if kinds:
        health = HealthCheck(kinds[0], path=o["health_http"] or "/",
                             command=tuple(shlex.split(o["health_cmd"])) if o["health_cmd"] else ())
    if health is not None:
        health = _sub(health, "health", {"interval": o["health_interval"], "timeout": o["health_timeout"],
                                         "retries": o["health_retries"], "start_period": o["health_start_period"]},
                      ("interval", "timeout", "start_period"))
    changes["health"] = health
    return spec.replace(**changes)


# ------------------------------------------------------------ progress

STAGES = ("new", "assigned", "preparing", "starting", "running")
"""A task's way to running; the bar fills by stage."""
BAR_WIDTH = 50
FAIL_LIMIT = 3
"""Failures of the current spec in one slot after which the progress display gives up (fewer when
the restart policy allows fewer attempts)."""
VERIFY_MAX = 30.0
"""The verify phase lasts the update config's ``monitor`` seconds, at most this long."""
MAX_SLOT_LINES = 20
"""Above this many wanted tasks only the overall line is shown (as Docker does): 100,000 slot lines
would be redrawn every ``POLL``."""


class _Board:
    """The progress block on stderr: redrawn in place on a terminal (ANSI cursor-up), and only
    the lines that changed, one per line, anywhere else (CI and test logs)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.drawn = 0
        self.printed: dict = {}

    def show(self, lines: list[tuple[object, str, str]]) -> None:
        """``lines``: (key, text on a terminal, text elsewhere)."""
        if self.tty:
            out = (f"\x1b[{self.drawn}A" if self.drawn else "") + "".join(f"\r\x1b[K{t}\n" for _, t, _ in lines)
            click.echo(out + "\x1b[J", err=True, nl=False, color=True)  # keep the escapes
            self.drawn = len(lines)
            return
        for key, _, plain in lines:
            if self.printed.get(key) != plain:
                self.printed[key] = plain
                click.echo(plain, err=True)

    def say(self, text: str) -> None:
        """A final line below the block."""
        click.echo(text, err=True)
        self.drawn = 0


def _bar(state: str) -> str:
    if state not in STAGES:
        return " " * BAR_WIDTH
    filled = BAR_WIDTH * (STAGES.index(state) + 1) // len(STAGES)
    return ("=" * (filled - 1) + ">").ljust(BAR_WIDTH)


def _slots(info: dict, rows: list[dict]) -> list[tuple[str, str, str]]:
    """(label, state, detail) per wanted task: each slot 1..replicas (replicated) or each node (global)."""
    newest: dict = {}
    for row in rows:  # each slot's current task first, then its history: the newest that should run wins
        key = row["slot"] or row["node"]
        if key not in newest or (newest[key]["desired"] != "running" and row["desired"] == "running"):
            newest[key] = row
    if info["spec"]["mode"] == "global":
        keys = sorted((k for k, r in newest.items() if r["desired"] == "running" and r["node"]),
                      key=lambda k: newest[k].get("node_name") or k)
        labels = {k: newest[k].get("node_name") or k for k in keys}
    else:
        total = info["spec"]["replicas"]
        keys = list(range(1, total + 1))
        labels = {k: f"{k}/{total}" for k in keys}
    out = []
    for key in keys:
        row = newest.get(key)
        if row is None or row["desired"] != "running":
            out.append((labels[key], "new", ""))
        elif not row.get("current_spec", True):
            out.append((labels[key], "pending", "waiting for its update"))
        else:
            detail = (row["error"] or "") if row["state"] != "running" else ""
            out.append((labels[key], row["state"], " ".join(detail.split())[:80]))
    return out


def _failure(name: str, info: dict, rows: list[dict]) -> str | None:
    """One line when a slot keeps failing (or will not be restarted), else None."""
    spec = info["spec"]
    if info["update_state"] in ("updating", "rollback_started"):
        config = spec["update"] if info["update_state"] == "updating" else spec["rollback"]
        if config["failure_action"] != "continue":
            return None  # the update itself pauses or rolls back, which is reported as such
    restart = spec["restart"]
    limit = 1 if restart["condition"] == "none" else \
        min(FAIL_LIMIT, restart["max_attempts"] + 1) if restart["max_attempts"] else FAIL_LIMIT
    failed: dict = {}
    for row in rows:
        if row["version"] == info["version"] and row["state"] in ("failed", "rejected"):
            failed.setdefault(row["slot"] or row["node"], []).append(row)
    for key, tasks in sorted(failed.items(), key=lambda kv: str(kv[0])):
        if len(tasks) >= limit:
            why = " ".join((tasks[0]["error"] or tasks[0]["state"]).split())[:120]
            times = "once" if len(tasks) == 1 else f"{len(tasks)} times"
            return (f"task {tasks[0]['name']} of {name} failed {times}: {why} "
                    f"(see `p2pswarm service ps {name}`)")
    return None


def converge(client: ApiClient, name: str, version: int | None = None) -> None:
    """Show ``docker service create``'s progress until every wanted task runs the current spec,
    then verify for the update monitor period that they stay so.  Raises ClickException (one
    line) when a slot keeps failing, the update pauses, or (``version`` given: the version an
    update made) it was rolled back."""
    deadline, verified_since, board = time.monotonic() + CONVERGE_TIMEOUT, None, _Board()
    while True:
        info = client.get(_path(name))
        if version is not None and info["version"] > version and info["update_state"] == "rollback_completed":
            raise click.ClickException(f"update of {name} was rolled back: {info['update_message'] or 'tasks failed'}"
                                       f" (see `p2pswarm service ps {name}`)")
        if info["update_state"] in ("paused", "rollback_paused"):
            raise click.ClickException(f"update of {name} {info['update_state'].replace('_', ' ')}: "
                                       f"{info['update_message'] or 'tasks failed'} (see `p2pswarm service ps {name}`)")
        rows = client.get(_path(name, "tasks"))["tasks"]
        failure = _failure(name, info, rows)
        if failure:
            raise click.ClickException(failure)
        running, desired = info["running_current"], info["desired"]
        # after a scale down the extra tasks run until they are stopped: not done, and not "4 out of 2"
        done = running == desired and info["running"] == running and info["update_state"] not in (
            "updating", "rollback_started")
        now = time.monotonic()
        verified_since = (verified_since or now) if done else None
        verify = min(VERIFY_MAX, float(info["spec"]["update"]["monitor"]))
        overall = f"overall progress: {min(running, desired)} out of {desired} tasks" + (
            f" ({info['running'] - desired} stopping)" if info["running"] > desired else "")
        lines = [("overall", overall, overall)]
        if info.get("scheduling_error"):
            lines.append(("scheduling", info["scheduling_error"], info["scheduling_error"]))
        slots = _slots(info, rows)
        for label, state, detail in slots if len(slots) <= MAX_SLOT_LINES else ():
            lines.append((label, f"{label}: {state:<9} [{_bar(state)}] {detail}".rstrip(),
                          f"{label}: {state}" + (f" ({detail})" if detail else "")))
        if verified_since is not None:
            left = math.ceil(verify - (now - verified_since))
            lines.append(("verify", f"verify: Waiting {max(0, left)} seconds to verify that tasks are stable...",
                          f"verify: Waiting {math.ceil(verify)} seconds to verify that tasks are stable..."))
        board.show(lines)
        if verified_since is not None and now - verified_since >= verify:
            board.say("verify: Service converged")
            return
        if now > deadline:
            raise click.ClickException(f"{name} did not converge within {CONVERGE_TIMEOUT:g} s "
                                       f"(it keeps trying; see `p2pswarm service ps {name}`)")
        time.sleep(POLL)


def _finish(client: ApiClient, name: str, detach: bool) -> None:
    click.echo(name)
    if not detach:
        converge(client, name)


# ------------------------------------------------------------ commands

@click.group()
def service():
    """Create and manage services (replicated or global tasks kept running by the cluster)."""


@service.command("create", context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@spec_options
@click.option("--detach", "-d", is_flag=True, help="Return at once instead of showing progress.")
@data_dir_option
def create(name, command, detach, data_dir, **flags):
    """Create service NAME running COMMAND (put `--` before it): p2pswarm service create web -- python app.py;
    or containers of an image: p2pswarm service create web --image nginx:1.27 -p 8080:80"""
    if not command and flags["image"] is None:
        raise click.UsageError("give the COMMAND tasks run (after --), or --image IMAGE")
    base = ServiceSpec(name, command[0] if command else "", tuple(command[1:]), image=flags["image"])
    spec = apply_flags(base, flags)
    client = _client(data_dir)
    client.request("POST", "/v1/services", {"spec": spec.to_dict()})
    _finish(client, name, detach)
    return 0


@service.command("update")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@spec_options
@click.option("--detach", "-d", is_flag=True, help="Return at once instead of showing progress.")
@data_dir_option
def update(name, command, detach, data_dir, **flags):
    """Change service NAME: given flags (and COMMAND after `--`) replace those of its spec; a change to what
    a task runs is rolled out by the service's update config."""
    client = _client(data_dir)
    info = client.get(_path(name))
    spec = ServiceSpec.from_dict(info["spec"])
    if command:
        spec = spec.replace(command=command[0], args=tuple(command[1:]))
    spec = apply_flags(spec, flags)
    done = client.request("POST", _path(name, "update"), {"spec": spec.to_dict(), "version": info["version"]})
    click.echo(name)
    if not detach:
        converge(client, name, done["version"])
    return 0


@service.command("rollback")
@click.argument("name")
@click.option("--detach", "-d", is_flag=True)
@data_dir_option
def rollback(name, detach, data_dir):
    """Return service NAME to its previous spec."""
    client = _client(data_dir)
    client.request("POST", _path(name, "rollback"), {})
    _finish(client, name, detach)
    return 0


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True)
@click.option("--detach", "-d", is_flag=True)
@data_dir_option
def scale(pairs, detach, data_dir):
    """Set replica counts: p2pswarm service scale web=6 api=2"""
    client = _client(data_dir)
    wanted = []
    for pair in pairs:
        name, sep, count = pair.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(f"expected NAME=REPLICAS, got {pair!r}", param_hint="NAME=REPLICAS")
        wanted.append((name, int(count)))
    for name, count in wanted:
        client.request("POST", _path(name, "scale"), {"replicas": count})
        click.echo(f"{name} scaled to {count}")
    if not detach:
        for name, _ in wanted:
            converge(client, name)
    return 0


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@data_dir_option
def rm(names, data_dir):
    """Remove services (their tasks are stopped)."""
    return remove_each(_client(data_dir), names, _path)


def _format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                        show_default=True)(fn)


@service.command("ls")
@_format_option
@data_dir_option
def ls(fmt, data_dir):
    """List services."""
    rows = _client(data_dir).get("/v1/services")["services"]
    if fmt == "json":
        click.echo(to_json(rows))
        return 0
    click.echo(table(["NAME", "MODE", "REPLICAS", "PORTS", "VERSION", "UPDATE"],
                     [[r["name"], r["mode"], f"{r['running']}/{r['desired']}", ",".join(r["ports"]) or "-",
                       r["version"], r["update_state"] or "-"] for r in rows]))
    return 0


@service.command("ps")
@click.argument("name")
@_format_option
@data_dir_option
def ps(name, fmt, data_dir):
    """List the tasks of service NAME (each slot's current task, then its history)."""
    answer = _client(data_dir).get(_path(name, "tasks"))
    rows = answer["tasks"]
    if fmt == "json":
        click.echo(to_json(rows))
        return 0
    if answer.get("scheduling_error"):
        click.echo(f"{name}: {answer['scheduling_error']}", err=True)
    for e in answer.get("port_errors", ()):
        click.echo(f"{name}: node {e['node']} cannot listen on published port {e['port']}: {e['error']}", err=True)
    click.echo(table(["ID", "NAME", "NODE", "VERSION", "DESIRED", "CURRENT", "PORT", "ERROR"],
                     [[r["id"], r["name"] if r["current"] else " \\_ " + r["name"], r.get("node_name") or "-",
                       r["version"], r["desired"], r["state"] + (f" ({r['health']})" if r["health"] else ""),
                       r["port"] or "-", r["error"] or ""] for r in rows]))
    return 0


@service.command("inspect")
@click.argument("name")
@data_dir_option
def inspect(name, data_dir):
    """Print service NAME's spec and status as JSON."""
    click.echo(to_json(_client(data_dir).get(_path(name))))
    return 0


FOLLOW_POLL = 0.5
"""Seconds between two polls of ``service logs --follow``."""
MAX_GET_CURSOR = 6000
"""A longer cursor goes in a POST body instead of the URL."""


def _tail(value: str) -> str:
    if value == "all" or value.isdigit():
        return value
    raise click.BadParameter(f"expected a number of lines or 'all', got {value!r}", param_hint="--tail")


def _stamp(at: float | None) -> str:
    if at is None:
        return "-"
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{whole}.{int(round((at % 1) * 1e6)) % 1000000:06d}Z"


@service.command("logs")
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until Ctrl-C.")
@click.option("--tail", "tail", default="all", show_default=True, help="Lines to show per task (or 'all').")
@click.option("--timestamps", "-t", is_flag=True, help="Show when each line arrived (UTC).")
@click.option("--since", default=None, help="Only lines from this time on (RFC 3339, unix seconds or e.g. 10m).")
@click.option("--until", default=None, help="Only lines up to this time (same forms; --follow stops there).")
@data_dir_option
def logs(name, follow, tail, timestamps, since, until, data_dir):
    """Print the output of NAME's tasks from every node, ordered by time:
    `web.2.<task>@<node> | line` (stderr lines go to stderr). A node that is down or does not
    answer is one warning line; its tasks' output is missing. Ended tasks' logs stay readable for the
    service's --log-retention (default 1h) after `service ps` forgets them."""
    from p2pswarm.cli.events_cmds import parse_option_time
    tail = _tail(tail)
    window = {k: repr(v) for k, v in (("since", parse_option_time(since, "--since")),
                                      ("until", parse_option_time(until, "--until"))) if v is not None}
    client, cursor, warned = _client(data_dir), "", set()
    try:
        while True:
            options = {"tail": tail, "cursor": cursor, **window}
            if len(cursor) > MAX_GET_CURSOR:
                got = client.request("POST", _path(name, "logs"), options)
            else:
                got = client.get(_path(name, "logs") + "?" + urllib.parse.urlencode(options))
            for warning in got["warnings"]:
                if warning not in warned:
                    warned.add(warning)
                    click.echo(f"warning: {warning}", err=True)
            for line in got["lines"]:
                prefix = f"{name}.{line['slot'] or line['node']}.{line['task']}@{line['node_name']}"
                if timestamps:
                    prefix = f"{_stamp(line['t'])} {prefix}"
                click.echo(f"{prefix} | {line['text']}", err=line["stream"] == "stderr")
            cursor = got["cursor"]
            if got["done"]:
                if not follow or ("until" in window and time.time() > float(window["until"])):
                    return 0
                time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        return 0


@click.command("update")
@click.argument("node")
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]))
@click.option("--label-add", multiple=True, help="k=v (repeatable)")
@click.option("--label-rm", multiple=True, help="label key (repeatable)")
@data_dir_option
def node_update(node, availability, label_add, label_rm, data_dir):
    """Change a node's availability or labels (NODE: name or id)."""
    body = {"availability": availability, "label_add": _pairs(label_add, "--label-add"), "label_rm": list(label_rm)}
    _client(data_dir).request("POST", f"/v1/nodes/{urllib.parse.quote(node, safe='')}/update", body)
    click.echo(node)
    return 0
