"""The ``tidal`` command: a thin Typer shell over service functions that return data.

Every command takes ``--json`` (machine-readable output on stdout; progress and messages go
to stderr). Exit codes: 0 success / promoted, 1 internal error, 2 usage or configuration error,
3 rejected by the gate, 4 data rejected by validation, 75 temporary failure (retry may help).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tidal.cli_help import readable_help
from tidal.errors import EXIT_INVALID_DATA, EXIT_REJECTED, EXIT_RETRY, TidalError, UsageError

app = typer.Typer(
    name="tidal",
    help="Continuous training and serverless serving: data lands, a better model serves.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Registered model versions.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the endpoint.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
if not out.is_terminal:
    out.width = 160  # pipes and CI logs: keep tables whole instead of 80 columns
F = TypeVar("F", bound=Callable[..., Any])

JSON_OPT: Any = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
WS_OPT: Any = typer.Option(
    None,
    "--workspace",
    "-w",
    metavar="DIR",
    help="Workspace folder (default: nearest tidal.yaml).",
)


def _show_version(value: bool) -> None:
    if value:
        from tidal import __version__

        sys.stdout.write(f"tidal {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print Tidal's version and exit.",
    ),
) -> None:
    """Continuous training and serverless serving: data lands, a better model serves."""


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


def reported(fn: F) -> F:
    """Turn TidalErrors into a message (JSON with --json) and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TidalError as exc:
            if kwargs.get("as_json"):
                _print_json({"error": exc.to_dict()})
            else:
                err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
                if exc.hint:
                    err.print(f"[dim]hint: {exc.hint}[/]", highlight=False)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]


def _workspace(path: Path | None) -> Any:
    from tidal.workspace import Workspace

    return Workspace.open(path)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("tidal").setLevel(logging.INFO)


# -- init -------------------------------------------------------------------------------------


@app.command()
@reported
def init(
    folder: Path = typer.Argument(Path("."), metavar="DIR", help="Folder of the new workspace."),
    example: str | None = typer.Option(
        None,
        metavar="NAME",
        help="Example data: tabular (breast cancer), wine, or sentiment (movie reviews).",
    ),
    task: str | None = typer.Option(
        None,
        metavar="TASK",
        help="tabular or text (default: text with --text-column, else tabular).",
    ),
    label: str | None = typer.Option(
        None, metavar="COLUMN", help="Name of the label column in your files."
    ),
    text_column: str | None = typer.Option(
        None, metavar="COLUMN", help="Text tasks: the column holding the text."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing tidal.yaml."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the default tidal.yaml and exit."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Create a workspace: a commented tidal.yaml (and example data with --example)."""
    from tidal.config import Config, render_yaml
    from tidal.examples import init_workspace

    if print_config:
        sys.stdout.write(render_yaml(Config()))
        return
    result = init_workspace(
        folder, example=example, task=task, label=label, text_column=text_column, force=force
    )
    if as_json:
        _print_json(result)
        return
    out.print(f"Workspace ready in [bold]{result['workspace']}[/]")
    for path in result["files"]:
        out.print(f"  wrote {path}", highlight=False)
    if example:
        out.print(f"\nNext: cd {folder} && tidal run data/batch-1.csv", highlight=False)
        if result["task"] == "text":
            out.print(
                "[dim](fine-tunes MiniLM on the CPU: a few minutes; "
                "training.params in tidal.yaml sets epochs and lengths)[/]",
                highlight=False,
            )


# -- run / ingest / up / serve ----------------------------------------------------------------


class StepProgress:
    """Shows the current step and training progress on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err.is_terminal
        self.status = err.status("starting…") if self.enabled else None
        self.quiet = not enabled

    def __enter__(self) -> StepProgress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, step: str, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        event = info.get("event")
        if event == "start" and self.status is not None:
            self.status.update(f"{step}…")
        elif event == "progress" and self.status is not None:
            extra = " ".join(
                f"{k} {v:.4g}"
                for k, v in info.items()
                if isinstance(v, float) and k not in ("step", "total")
            )
            self.status.update(f"{step}: step {info.get('step')}/{info.get('total')} {extra}")
        elif event == "resumed":
            err.print(
                f"  [cyan]↻[/] training resumes from its checkpoint at step {info.get('step')}",
                highlight=False,
            )
        elif event == "done":
            err.print(f"  [green]✓[/] {step:<9} {info['seconds']:.2f} s", highlight=False)


def _resolve_source(ctrl: Any, target: str) -> tuple[str, str | None]:
    """A store URI as it is; a local file (or a URI outside the store) copied into incoming/."""
    store = ctrl.ws.store
    if target.startswith(store.root + "/"):
        return target, None
    if "://" in target and not target.startswith("file://"):
        raise UsageError(
            f"{target} is outside the workspace store {store.root}",
            hint="copy it into the store's incoming/ prefix, or give a local file",
        )
    path = Path(target[len("file://") :] if target.startswith("file://") else target)
    if store.protocol == "file":  # a file inside the store is that object, never a copy of it
        inside = Path(store.root[len("file://") :])
        if path.resolve().is_relative_to(inside):
            return store.uri(path.resolve().relative_to(inside).as_posix()), None
    return ctrl.ingest(path)


def _record_exit(record: dict[str, Any]) -> int:
    decision = record.get("decision")
    if decision == "failed" and record.get("retryable"):
        return EXIT_RETRY
    return {"promoted": 0, "rejected": EXIT_REJECTED, "invalid": EXIT_INVALID_DATA}.get(
        str(decision), 1
    )


def _print_record(record: dict[str, Any]) -> None:
    decision = record.get("decision")
    color = {"promoted": "green", "rejected": "yellow", "invalid": "red"}.get(str(decision), "red")
    head = f"[bold {color}]{decision}[/]"
    if record.get("version"):
        head += f"  version v{record['version']}"
    head += f"  champion: {('v' + str(record['champion'])) if record.get('champion') else 'none'}"
    if record.get("repeated"):
        head += "  [dim](already run; earlier record)[/]"
    out.print(head, highlight=False)
    cand = (record.get("metrics") or {}).get("candidate") or {}
    champ = (record.get("metrics") or {}).get("champion") or {}
    if cand:
        table = Table(box=None, pad_edge=False)
        table.add_column("slice")
        table.add_column("rows", justify="right")
        table.add_column("accuracy", justify="right")
        table.add_column("macro-F1", justify="right")
        if champ:
            table.add_column(f"champion v{record.get('champion_before')} acc/F1", justify="right")
        for name, m in cand.items():
            row = [name, str(int(m["rows"])), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}"]
            if champ:
                c = champ.get(name, {})
                row.append(f"{c.get('accuracy', 0):.3f} / {c.get('macro_f1', 0):.3f}")
            table.add_row(*row)
        out.print(table)
    for reason in record.get("reasons") or []:
        out.print(f"  - {reason}", highlight=False)
    if record.get("quarantine"):
        out.print(f"  moved to {record['quarantine']}", highlight=False)
    if record.get("rollout"):
        rollout = record["rollout"]
        out.print(
            f"  rollout {rollout['id']} ({rollout['strategy']}) started: the champion stays "
            "until it completes ('tidal rollout status')",
            highlight=False,
        )
    out.print(f"  {record.get('seconds', 0):.2f} s", highlight=False)


@app.command()
@reported
def run(
    target: str = typer.Argument(
        ..., metavar="FILE_OR_URI", help="A CSV/JSON Lines file, or a URI in the store."
    ),
    workspace: Path | None = WS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Run the whole pipeline for one file, now, and print the decision."""
    from tidal.controller import Controller

    ws = _workspace(workspace)
    with StepProgress(enabled=not as_json) as progress:
        ctrl = Controller(ws, progress=progress)
        uri, sha = _resolve_source(ctrl, target)
        record = ctrl.run_object(uri, sha)
    if as_json:
        _print_json(record)
    else:
        _print_record(record)
    code = _record_exit(record)
    if code:
        raise typer.Exit(code)


@app.command()
@reported
def ingest(
    files: list[Path] = typer.Argument(..., metavar="FILE", help="Files to copy into incoming/."),
    workspace: Path | None = WS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Copy files into the store's incoming/ prefix; a running 'tidal up' picks them up."""
    from tidal.controller import Controller

    ctrl = Controller(_workspace(workspace))
    done = []
    for path in files:
        uri, sha = ctrl.ingest(path)
        done.append({"file": str(path), "uri": uri, "sha256": sha})
    if as_json:
        _print_json(done)
        return
    for item in done:
        out.print(f"{item['file']} → {item['uri']}", highlight=False)


def build_endpoint(ws: Any) -> Any:
    """The endpoint's app for a workspace: its champion, and the candidate of a running
    rollout, served by worker processes."""
    from tidal.serving.gateway import build_app
    from tidal.serving.runtime import Runtime, deployed_flavors
    from tidal.serving.slot import ModelSlot
    from tidal.serving.variants import CANDIDATE, RolloutRouter

    current = ws.state.current_deployment(ws.model_name)
    flavors = deployed_flavors([current.model_dir]) if current else []
    if not flavors:  # nothing deployed yet: get ready for what this workspace will train
        flavors = ["transformers" if ws.config.data.task == "text" else "sklearn"]
    runtime = Runtime(ws.config.serving, store=ws.store, flavors=flavors)
    primary = ModelSlot(
        source=lambda: ws.state.current_deployment(ws.model_name),
        loader=runtime.loader(),
        keep_previous_s=ws.config.rollout.termination_wait_s,  # instant 'models rollback'
    )

    def active_rollout() -> dict[str, Any] | None:
        found = ws.state.rollouts(ws.model_name, active=True)
        return found[0] if found else None

    router = RolloutRouter(
        primary,
        runtime.loader(CANDIDATE),
        active_rollout,
        ws.state.add_snapshots,
        snapshot_every_s=min(1.0, max(0.2, ws.config.serving.reload_interval_s)),
    )
    from tidal.monitoring.feedback_routes import feedback_routes
    from tidal.rollout.routes import rollout_routes

    def extra_routes(gateway: Any) -> list[Any]:
        feedback = feedback_routes(ws.store, ws.config.serving)
        return [*rollout_routes(ws, gateway.authorize), *feedback]

    return build_app(ws.config.serving, router, runtime, extra_routes=extra_routes)


@app.command()
@reported
def up(
    workspace: Path | None = WS_OPT,
    port: int | None = typer.Option(
        None, metavar="PORT", help="Endpoint port (default: serving.port)."
    ),
    serve_endpoint: bool = typer.Option(True, "--serve/--no-serve", help="Also run the endpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the loop does."),
) -> None:
    """Run the controller (watching incoming/) and the endpoint until Ctrl-C."""
    from tidal.controller import Controller
    from tidal.serving.server import BackgroundServer

    overrides = {"serving": {"port": port}} if port else None
    from tidal.workspace import Workspace

    ws = Workspace.open(workspace, overrides=overrides)
    _setup_logging(verbose)
    stop = threading.Event()
    server = None
    if serve_endpoint:
        server = BackgroundServer(
            build_endpoint(ws),
            ws.config.serving.host,
            ws.config.serving.port,
            header_timeout_s=ws.config.serving.header_timeout_s,
        )
        server.start()
        ws.record_endpoint(server.url)  # 'tidal predict' and 'tidal status' find it there
        err.print(f"endpoint on {server.url}", highlight=False)
    err.print(f"watching {ws.store.uri('incoming/')} (Ctrl-C stops)", highlight=False)
    from tidal.rollout.manager import watch

    rollouts = threading.Thread(target=watch, args=(ws, stop), name="tidal-rollouts", daemon=True)
    rollouts.start()
    from tidal.cli_monitor import monitor_forever

    threading.Thread(
        target=monitor_forever, args=(ws, stop), name="tidal-monitor", daemon=True
    ).start()
    progress = StepProgress(enabled=False)
    try:
        Controller(ws, progress=progress).serve_forever(stop)
    except KeyboardInterrupt:
        err.print("stopping…")
    finally:
        stop.set()
        if server is not None:
            server.stop()
            ws.forget_endpoint()


@app.command()
@reported
def serve(
    workspace: Path | None = WS_OPT,
    host: str | None = typer.Option(None, help="Bind address (default: serving.host)."),
    port: int | None = typer.Option(None, help="Port (default: serving.port)."),
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        envvar="TIDAL_MODEL_DIR",
        help="Serve this model folder instead of a workspace's champion (a SageMaker "
        "container serves /opt/ml/model this way).",
    ),
    manifest_sha256: str | None = typer.Option(
        None,
        "--manifest-sha256",
        envvar="TIDAL_MANIFEST_SHA256",
        help="With --model-dir: the sha256 its manifest must have (the registered version's "
        "tidal.manifest_sha256 tag); a folder whose manifest differs is refused.",
    ),
) -> None:
    """Run the endpoint alone: the champion (following new deployments), or one model folder."""
    from tidal.config import load_config
    from tidal.serving.server import serve as run_server

    serving: dict[str, Any] = {}
    if host:
        serving["host"] = host
    if port or os.environ.get("SAGEMAKER_BIND_TO_PORT"):
        serving["port"] = port or int(os.environ["SAGEMAKER_BIND_TO_PORT"])
    overrides = {"serving": serving} if serving else None
    _setup_logging()
    ws = None
    if model_dir is not None:
        config = load_config(Path.cwd(), overrides=overrides)
        endpoint = build_folder_endpoint(model_dir, config.serving, manifest_sha256)
    else:
        from tidal.workspace import Workspace

        if manifest_sha256:
            raise UsageError("--manifest-sha256 goes with --model-dir")
        ws = Workspace.open(workspace, overrides=overrides)
        config = ws.config
        endpoint = build_endpoint(ws)
    from tidal.workspace import local_url

    url = local_url(config.serving.host, config.serving.port)
    err.print(f"endpoint on http://{config.serving.host}:{config.serving.port}", highlight=False)
    if ws is not None:
        ws.record_endpoint(url)  # 'tidal predict' finds this port, whatever the config says
    try:
        run_server(
            endpoint,
            config.serving.host,
            config.serving.port,
            header_timeout_s=config.serving.header_timeout_s,
        )
    finally:
        if ws is not None:
            ws.forget_endpoint()


def build_folder_endpoint(model_dir: Path, serving: Any, expected_sha256: str | None = None) -> Any:
    """The endpoint's app for one model folder, as a SageMaker container serves it; with
    ``expected_sha256``, only if its manifest has that sha256."""
    from tidal.artifact import MANIFEST
    from tidal.errors import ModelLoadError
    from tidal.serving.gateway import build_app
    from tidal.serving.runtime import Runtime, deployed_flavors
    from tidal.serving.slot import ModelSlot, SingleVariantRouter
    from tidal.state import Deployment
    from tidal.storage import sha256_file

    folder = model_dir.resolve()
    if not (folder / MANIFEST).is_file():
        raise UsageError(
            f"{folder} is not a Tidal model folder: it has no {MANIFEST}",
            hint="point --model-dir at a folder a Tidal run wrote (.tidal/models/vN in a "
            "workspace), e.g. the model.tar.gz of a Tidal training job extracted",
        )
    found = sha256_file(folder / MANIFEST)
    if expected_sha256 is None:
        err.print(
            f"[bold yellow]warning:[/] serving {folder} without --manifest-sha256: its files are "
            "checked against the manifest found there, so whoever can write the folder chooses "
            "the model; pass --manifest-sha256 (or TIDAL_MANIFEST_SHA256): the registered "
            "version's tidal.manifest_sha256 tag",
            highlight=False,
        )
    elif expected_sha256.strip().lower() != found:
        raise ModelLoadError(
            f"{folder / MANIFEST} has sha256 {found}, not the expected {expected_sha256}; "
            "refusing to serve it",
            hint="the folder was changed or holds another model: copy the registered version "
            "again, or pass that version's tidal.manifest_sha256 tag",
        )
    fixed = Deployment(
        id=1,
        model=folder.name if folder.name not in ("model", "") else "model",
        version=os.environ.get("TIDAL_MODEL_VERSION", "1"),
        model_dir=str(folder),
        manifest_sha256=found,  # later changes are refused
        reason="served from --model-dir",
        run_id=None,
        rolled_back=False,
        created_at=(folder / MANIFEST).stat().st_mtime,
    )
    runtime = Runtime(serving, flavors=deployed_flavors([str(folder)]))
    slot = ModelSlot(source=lambda: fixed, loader=runtime.loader())
    return build_app(serving, SingleVariantRouter(slot), runtime)


# -- status / models / keys -------------------------------------------------------------------


@app.command()
@reported
def status(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """The champion, the endpoint, the queue, the polling cursor, recent runs and events."""
    from tidal.overview import clock, cursor_line, queue_line
    from tidal.overview import status as get_status

    data = get_status(_workspace(workspace))
    if as_json:
        _print_json(data)
        return
    champ = data["champion"]
    out.print(f"[bold]{data['project']}[/]  workspace {data['workspace']}", highlight=False)
    out.print(f"storage   {data['storage']}", highlight=False)
    if champ:
        m = champ.get("metrics") or {}
        out.print(
            f"champion  v{champ['version']}  accuracy {m.get('accuracy', float('nan')):.3f}  "
            f"macro-F1 {m.get('macro_f1', float('nan')):.3f}  ({champ['reason']})",
            highlight=False,
        )
    else:
        out.print("champion  none yet (tidal run FILE)")
    ep = data["endpoint"]
    state = "down" if not ep.get("up") else f"up, serving v{ep.get('model_version')}"
    if ep.get("up") and "workers" in ep:
        workers = ep["workers"]
        state += f", {workers} worker{'s' if workers != 1 else ''}" + (
            " (scaled to zero)" if not workers else ""
        )
    out.print(f"endpoint  {ep['url']} ({state})", highlight=False)
    out.print(f"queue     {queue_line(data['queue'])}", highlight=False)
    out.print(f"cursor    {cursor_line(data.get('cursor'))}", highlight=False)
    retrain = data.get("retrain")
    if retrain:
        line = f"retrain   {retrain['action']} ({retrain['reason']}): {retrain['message']}"
        out.print(line + (f"  → run {retrain['run_id']}" if retrain.get("run_id") else ""),
                  highlight=False)  # fmt: skip
    for run in data["active_runs"]:
        line = f"active    run {run['run_id']} {Path(run['source']).name}: {run['step']}"
        p = run.get("progress") or {}
        if p.get("total"):
            line += f"  step {p.get('step')}/{p['total']}"
            if p.get("loss") is not None:
                line += f"  loss {p['loss']:.4f}"
            if p.get("eta_s") is not None:
                line += f"  ETA {p['eta_s']:.0f} s"
        out.print(line, highlight=False)
    if data["recent_runs"]:
        table = Table("run", "source", "status", "decision", "version", "seconds", box=None)
        for r in data["recent_runs"]:
            table.add_row(
                str(r["run_id"]),
                Path(r["source"]).name,
                r["status"],
                r["decision"] or "",
                f"v{r['version']}" if r["version"] else "",
                f"{r['seconds']:.1f}" if r["seconds"] else "",
            )
        out.print(table)
    if data.get("events"):
        out.print("events")
        for event in data["events"]:
            out.print(
                f"  {clock(event['ts'])}  {event['kind']:<18} {event['message']}", highlight=False
            )


@models_app.command("list")
@reported
def models_list(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Every registered version with its decision and metrics."""
    from tidal.overview import list_models

    rows = list_models(_workspace(workspace))
    if as_json:
        _print_json(rows)
        return
    table = Table("version", "decision", "aliases", "accuracy", "macro-F1", "source", box=None)
    for r in rows:
        table.add_row(
            f"v{r['version']}" + (" *" if r["serving"] else ""),
            r["decision"] or "",
            ",".join(r["aliases"]),
            f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "",
            f"{r['macro_f1']:.3f}" if r["macro_f1"] is not None else "",
            Path(r["source"] or "").name,
        )
    out.print(table)
    out.print("[dim]* serving[/]")


@models_app.command("show")
@reported
def models_show(version: str, workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Metrics, decision record and lineage of one version."""
    from tidal.overview import show_model

    data = show_model(_workspace(workspace), version.lstrip("v"))
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]v{data['version']}[/]  aliases: {', '.join(data['aliases']) or '-'}")
    record = data.get("decision_record") or {}
    out.print(f"decision  {record.get('decision')}", highlight=False)
    for reason in record.get("reasons", []):
        out.print(f"  - {reason}", highlight=False)
    out.print("lineage")
    for key, value in data["lineage"].items():
        out.print(f"  {key:<16} {value}", highlight=False)
    out.print("metrics")
    for key, value in sorted(data["metrics"].items()):
        out.print(f"  {key:<36} {value:.4f}", highlight=False)


@models_app.command("rollback")
@reported
def models_rollback(workspace: Path | None = WS_OPT, as_json: bool = JSON_OPT) -> None:
    """Put the previous champion back; the endpoint follows within a second."""
    from tidal.deploy import rollback

    result = rollback(_workspace(workspace))
    if as_json:
        _print_json(result)
        return
    out.print(f"champion v{result['from']} → v{result['to']}", highlight=False)


@keys_app.command("create")
@reported
def keys_create(
    scope: str = typer.Option(
        "admin", help="admin (admin routes, predictions when keyed) or feedback (POST /feedback)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Make an API key; only its hash goes into tidal.yaml."""
    from tidal.errors import UsageError
    from tidal.serving.auth import SCOPES, key_id, new_key

    if scope not in SCOPES:
        raise UsageError(f"unknown scope {scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")
    setting = "feedback_keys" if scope == "feedback" else "api_keys"
    key, digest = new_key()
    if as_json:
        _print_json({"key": key, "hash": digest, "scope": scope, "key_id": key_id(digest)})
        return
    out.print(
        f"key   {key}   (shown once; send it as 'Authorization: Bearer <key>')", highlight=False
    )
    out.print(f"hash  {digest}   (id {key_id(digest)}, scope {scope})", highlight=False)
    out.print(
        f"add the hash to serving.{setting} in tidal.yaml, e.g.\n  {setting}: ['{digest}']",
        highlight=False,
    )


# -- demo -------------------------------------------------------------------------------------


@app.command()
@reported
def demo(
    example: str = typer.Option(
        "tabular",
        metavar="NAME",
        help="Which story: tabular or wine (under a minute), sentiment (MiniLM fine-tuned "
        "on movie reviews, about 6 minutes on 2 CPU cores).",
    ),
    keep: Path | None = typer.Option(
        None, metavar="DIR", help="Keep the workspace in this folder."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """The whole story in a fresh workspace: promote, improve, reject, quarantine."""
    from tidal.demo import run_demo

    summary = run_demo(example=example, keep=keep, console=None if as_json else out)
    if as_json:
        _print_json(summary)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `tidal predict ... | head`: the reader left, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":  # python -m tidal.cli: run the imported module, whose
    from tidal.cli import main as _imported_main  # app has every command registered

    _imported_main()


from tidal.cli_rollout import rollout_app  # noqa: E402  (it uses the helpers above)

app.add_typer(rollout_app, name="rollout")

import tidal.cli_monitor  # noqa: E402  (registers 'tidal monitor')
import tidal.cli_predict  # noqa: E402, F401  (registers 'tidal predict')

readable_help(app)  # last: every command and sub-app is registered by now
