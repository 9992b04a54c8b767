"""Command groups that import a subcommand's module only when that subcommand runs.

Every command module pulls in what its commands need (certificates, the lab, the simulator, the
scheduler's model); importing all of them made each `p2pswarm ...` call spend most of a second before
it did anything.  A group names its lazy subcommands as ``{"name": "module:attribute"}``; `--help`
still lists them all (it imports them to show their one-line help)."""

from __future__ import annotations

import difflib
import importlib

import click


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:
        """As click's, with the closest command named when there is no such command (a typo)."""
        name = click.utils.make_str(args[0]) if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(f"No such command {name!r}{hint}.")
        return super().resolve_command(ctx, args)
