"""``tidal rollout``: start, watch and steer a rollout (tidal.rollout.manager) by hand."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import typer

from tidal.cli import JSON_OPT, WS_OPT, _print_json, _workspace, err, out, reported

rollout_app = typer.Typer(
    help="Safe rollouts: canary, linear, blue/green, shadow, A/B.", no_args_is_help=True
)


def _manager(workspace: Path | None, **overrides: Any) -> Any:
    from tidal.rollout.manager import Manager
    from tidal.workspace import Workspace

    settings = {k: v for k, v in overrides.items() if v is not None}
    ws = Workspace.open(workspace, overrides={"rollout": settings} if settings else None)
    return Manager(ws)


def _show(rollout: dict[str, Any] | None, as_json: bool) -> None:
    if as_json:
        _print_json(rollout)
        return
    if rollout is None:
        out.print("no rollout yet (tidal rollout start VERSION)")
        return
    step = rollout["steps"][min(rollout["step"], len(rollout["steps"]) - 1)]
    out.print(
        f"rollout {rollout['id']}  v{rollout['candidate_version']} "
        f"(over v{rollout['baseline_version']}) by {rollout['strategy']}: "
        f"[bold]{rollout['status']}[/]",
        highlight=False,
    )
    out.print(
        f"  step {rollout['step'] + 1}/{len(rollout['steps'])}: candidate traffic "
        f"{rollout['traffic']:g}%, shadow {rollout['shadow']:g}%, bake {step['bake_s']:g} s",
        highlight=False,
    )
    if rollout["status"] in ("baking", "warming"):
        left = float(step["bake_s"]) - (time.time() - float(rollout["step_started_at"]))
        out.print(f"  bake ends in {max(0.0, left):.0f} s", highlight=False)
    if rollout.get("reason"):
        out.print(f"  reason: {rollout['reason']}", highlight=False)
    for name, evidence in (rollout.get("evidence") or {}).items():
        out.print(
            f"  {name}: {evidence.get('state')} value={evidence.get('value')} "
            f"limit={evidence.get('threshold')}",
            highlight=False,
        )
    if rollout.get("readout"):
        out.print(f"  A/B readout: {rollout['readout'].get('summary')}", highlight=False)


def _follow(manager: Any) -> dict[str, Any] | None:
    from tidal.rollout.manager import watch

    def changed(rollout: dict[str, Any]) -> None:
        err.print(
            f"rollout {rollout['id']}: {rollout['status']}, candidate at "
            f"{rollout['traffic']:g}% (step {rollout['step'] + 1}/{len(rollout['steps'])})"
            + (f": {rollout['reason']}" if rollout.get("reason") else ""),
            highlight=False,
        )

    return watch(manager.ws, threading.Event(), until_done=True, on_change=changed)


@rollout_app.command("start")
@reported
def start(
    version: str,
    strategy: str | None = typer.Option(
        None,
        help="all_at_once, canary, linear, blue_green, shadow or ab (default: rollout.strategy).",
    ),
    canary_percent: float | None = typer.Option(None, help="canary: first step's share."),
    linear_step_percent: float | None = typer.Option(None, help="linear: share per step."),
    bake_s: float | None = typer.Option(None, help="Wait interval of each step, seconds."),
    window_s: float | None = typer.Option(None, help="Alarm evaluation window, seconds."),
    sticky_header: str | None = typer.Option(None, help="Route by this header's value."),
    no_alarms: bool = typer.Option(
        False, "--no-alarms", help="Allow a rollout with every alarm off (refused otherwise)."
    ),
    follow: bool = typer.Option(
        False, "--watch", help="Drive the rollout here until it ends (no 'tidal up' needed)."
    ),
    workspace: Path | None = WS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Start rolling VERSION out; 'tidal up' (or --watch) moves it on, the endpoint applies it."""
    manager = _manager(
        workspace,
        canary_percent=canary_percent,
        linear_step_percent=linear_step_percent,
        bake_s=bake_s,
        window_s=window_s,
        sticky_header=sticky_header,
        allow_no_alarms=True if no_alarms else None,
    )
    rollout = manager.start(version.lstrip("v"), strategy=strategy)
    if follow:
        rollout = _follow(manager) or rollout
    _show(rollout, as_json)


@rollout_app.command("status")
@reported
def status(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """The running rollout (or the last one): step, traffic, bake, reason and evidence."""
    manager = _manager(workspace)
    _show(manager.active() or manager.latest(), as_json)


@rollout_app.command("watch")
@reported
def watch_cmd(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Drive the running rollout here until it ends (what 'tidal up' does in the background)."""
    _show(_follow(_manager(workspace)), as_json)


@rollout_app.command("pause")
@reported
def pause(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Hold the rollout where it is: all traffic back on the primary until resumed."""
    _show(_manager(workspace).pause(), as_json)


@rollout_app.command("resume")
@reported
def resume(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Go on with a paused rollout; the current step's bake starts again."""
    _show(_manager(workspace).resume(), as_json)


@rollout_app.command("abort")
@reported
def abort(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Stop the rollout: all traffic back on the primary, the candidate not promoted."""
    _show(_manager(workspace).abort(), as_json)


@rollout_app.command("promote")
@reported
def promote(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Promote the candidate now (a running rollout, or an A/B test that completed)."""
    _show(_manager(workspace).promote(), as_json)


__all__ = ["_workspace", "rollout_app"]
