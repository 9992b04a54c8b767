"""Command groups that import a subcommand's module only when that subcommand runs.

Every command module pulls in what its commands need (certificates, the lab, the simulator, the
scheduler's model); importing all of them made each `p2pswarm ...` call spend most of a second before
it did anything.  A group names its lazy subcommands as ``{"name": "module:attribute"}``; `--help`
still lists them all (it imports them to show their one-line help)."""

from __future__ import annotations

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
