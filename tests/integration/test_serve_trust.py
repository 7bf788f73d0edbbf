"""What 'tidal serve' trusts and where 'tidal predict' goes: a model folder served only with
the manifest sha256 expected of it (loudly when none is given), and predict following the port
a running 'tidal serve' recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tidal.artifact import MANIFEST
from tidal.cli import app, build_endpoint, build_folder_endpoint
from tidal.config import ServingConfig
from tidal.deploy import promote
from tidal.errors import ModelLoadError
from tidal.serving.server import BackgroundServer
from tidal.storage import sha256_file
from tidal.workspace import Workspace
from toy import register_toy_model


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "tidal.yaml").write_text("project: toy\nserving:\n  port: 1\n")  # nothing there
    ws = Workspace.open(tmp_path)
    promote(ws, register_toy_model(ws, 1, "good"), reason="first")
    return ws


def test_a_model_folder_is_served_only_with_its_expected_manifest(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = ws.state.current_deployment(ws.model_name)
    assert deployment is not None
    folder = Path(deployment.model_dir)
    real = sha256_file(folder / MANIFEST)
    with pytest.raises(ModelLoadError, match="not the expected"):
        build_folder_endpoint(folder, ServingConfig(), "0" * 64)
    build_folder_endpoint(folder, ServingConfig(), real)
    assert "without --manifest-sha256" not in capsys.readouterr().err
    build_folder_endpoint(folder, ServingConfig(), None)
    assert "without --manifest-sha256" in capsys.readouterr().err


def test_the_cli_refuses_a_mismatch_before_listening(ws: Workspace) -> None:
    deployment = ws.state.current_deployment(ws.model_name)
    assert deployment is not None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = ["serve", "--model-dir", deployment.model_dir, "--manifest-sha256", "ab" * 32]
    done = subprocess.run(
        [sys.executable, "-m", "tidal", *command, "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ws.root,
    )
    assert done.returncode != 0 and "refusing to serve it" in done.stderr


def test_predict_goes_to_the_port_the_running_endpoint_recorded(ws: Workspace) -> None:
    assert ws.endpoint_url.endswith(":1")  # the configured port: nothing listens there
    with BackgroundServer(build_endpoint(ws)) as server:  # as 'tidal serve --port N' would
        ws.record_endpoint(server.url)
        assert ws.endpoint_url == server.url
        result = CliRunner().invoke(
            app, ["predict", '{"x": 3}', "--json", "--workspace", str(ws.root)]
        )
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert answer["via"] == server.url and answer["predictions"][0]["label"] == "big"
        assert httpx.get(f"{server.url}/ping").status_code == 200
        ws.forget_endpoint()
    assert ws.endpoint_url.endswith(":1")
    (ws.home / "endpoint.json").write_text(json.dumps({"url": "http://x:2", "pid": 2**22 + 7}))
    assert ws.endpoint_url.endswith(":1")  # a record left by a process that is gone: ignored
