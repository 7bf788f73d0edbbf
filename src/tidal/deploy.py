"""Deployment of the champion: what the endpoint serves, and how to go back.

Promoting a version copies its model folder out of the registry into ``.tidal/models/``,
verifies every file's sha256, moves the ``champion`` alias and appends a deployment record;
the endpoint follows the latest record. Rolling back appends a record for the previous
champion and marks the abandoned version so a second rollback goes further back, not forward.
(The rollout strategies of a later issue replace the all-at-once switch here.)
"""

from __future__ import annotations

from pathlib import Path

from tidal.errors import TidalError, UsageError
from tidal.registry import CHAMPION
from tidal.state import Deployment
from tidal.workspace import Workspace


def prepare(ws: Workspace, version: str) -> tuple[Path, str]:
    """The verified local copy of ``version`` the endpoint loads, and its manifest's sha256."""
    from tidal.artifact import verify

    info = ws.registry.version(version)
    manifest_sha = info.tags.get("tidal.manifest_sha256")
    if not manifest_sha:
        raise TidalError(
            f"version {version} has no tidal.manifest_sha256 tag; it was not registered by "
            "Tidal and cannot be deployed"
        )
    target = ws.path("models") / f"v{version}"
    if not (target / "tidal-model.json").exists():
        ws.registry.download(info, target)
    verify(target, manifest_sha)
    return target, manifest_sha


def promote(ws: Workspace, version: str, *, reason: str, run_id: int | None = None) -> Deployment:
    """Make ``version`` the champion: verified local copy, alias, deployment record."""
    target, manifest_sha = prepare(ws, version)
    ws.registry.set_alias(CHAMPION, version)
    deployment = ws.state.deploy(ws.model_name, version, str(target), manifest_sha, reason, run_id)
    ws.state.event(
        "deploy",
        f"v{version} serves ({reason})",
        model=ws.model_name,
        run_id=run_id,
        data={"version": version},
    )
    return deployment


def rollback(ws: Workspace) -> dict[str, str]:
    """Put the previous champion back; returns {"from": old, "to": new}."""
    state = ws.state
    current = state.current_deployment(ws.model_name)
    if current is None:
        raise UsageError("nothing is deployed, so there is nothing to roll back")
    previous = next(
        (
            d
            for d in state.deployments(ws.model_name)
            if d.version != current.version and not d.rolled_back
        ),
        None,
    )
    if previous is None:
        abandoned = sorted(
            {d.version for d in state.deployments(ws.model_name) if d.version != current.version},
            key=int,
        )
        raise UsageError(
            f"v{current.version} is the only version ever deployed; there is no earlier one"
            if not abandoned
            else f"no earlier champion to go back to: {', '.join('v' + v for v in abandoned)}"
            f" {'was' if len(abandoned) == 1 else 'were'} rolled back already",
            hint="deploy another version first, or train one with 'tidal run FILE'",
        )
    state.mark_rolled_back(ws.model_name, current.version)
    promote(ws, previous.version, reason=f"rollback from v{current.version}")
    state.event(
        "rollback",
        f"rolled back from v{current.version} to v{previous.version}",
        model=ws.model_name,
    )
    return {"from": current.version, "to": previous.version}
