"""The container contract: deploy/Dockerfile's entrypoint started as SageMaker starts it.

No Docker engine runs here, so the image itself is not built; the test runs the same
entrypoint script with the environment the Dockerfile sets (but for the host, which stays on
127.0.0.1 outside a container) against a model folder, as /opt/ml/model would hold it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from tidal.artifact import Feature, Manifest, write_manifest
from toy import wait_ready

ROOT = Path(__file__).resolve().parents[2]

INFERENCE = """
def model_fn(model_dir):
    return None


def predict_fn(rows, model):
    return ["big" if row["x"] > 0 else "small" for row in rows]
"""


def test_the_image_serves_opt_ml_model_on_ping_and_invocations(tmp_path: Path) -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.M)
    assert 'CMD ["serve"]' in dockerfile and "TIDAL_SERVING__PORT=8080" in dockerfile

    model = tmp_path / "opt" / "ml" / "model"
    model.mkdir(parents=True)
    (model / "inference.py").write_text(textwrap.dedent(INFERENCE))
    write_manifest(
        model, Manifest("python", "tabular", [Feature("x", "number")], ["big", "small"], "y")
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        TIDAL_MODEL_DIR=str(model),
        TIDAL_SERVING__PORT=str(port),
        TIDAL_SERVING__HOST="127.0.0.1",
    )
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "entrypoint.sh"), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, log)
        answer = httpx.post(
            f"{url}/invocations",
            content="5\n-1\n",
            headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.text == "big\nsmall\n"
        assert answer.headers["x-inference-id"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert server.returncode in (0, -signal.SIGTERM), log.read_text()
