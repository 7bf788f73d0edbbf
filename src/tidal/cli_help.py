"""Readable ``--help`` for the ``tidal`` command: a flag shows no type, a value a word.

Typer shows every option as ``<bool>``/``<str>``; ``readable_help(app)`` gives every command
and group of an app (and of its sub-apps) parameters that print ``--force``, ``--file FILE``,
``--port PORT`` or ``--rows N`` instead.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

VALUE_NAMES = {"int": "N", "float": "NUMBER", "Path": "PATH", "str": "TEXT"}
OPTION_VALUES = {  # by parameter name, where the name says more than the type
    "api_key": "KEY",
    "file": "FILE",
    "host": "HOST",
    "model_dir": "DIR",
    "out_path": "FILE",
    "port": "PORT",
    "strategy": "NAME",
    "url": "URL",
}


def _no_type(ctx: Any) -> None:
    return None


def _readable(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "value").upper()  # tidal rollout start VERSION
            param.display_type_rich = _no_type  # type: ignore[method-assign]  # no <str> beside
        if isinstance(param, TyperOption) and param.metavar is None:
            if param.is_flag or param.count:
                param.metavar = ""  # --force, --json, --help: nothing follows them
            elif param.name in OPTION_VALUES:
                param.metavar = OPTION_VALUES[param.name]
            else:
                name = param.bare_type()
                param.metavar = VALUE_NAMES.get(name, name.upper())
    return params


class ReadableCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))


class ReadableGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))


def readable_help(typer_app: typer.Typer) -> None:
    """Give every command and group of ``typer_app`` (and its sub-apps) readable help."""
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = ReadableCommand
    typer_app.info.cls = ReadableGroup
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            readable_help(group.typer_instance)
