"""The CLI shell itself: --version, readable help, and what 'tidal status' prints."""

from __future__ import annotations

import json
import re
import socket
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tidal
from tidal.cli import app
from tidal.examples import init_workspace
from tidal.overview import queue_line
from tidal.triggers.polling import PollingSource
from tidal.workspace import INCOMING, Workspace

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "120", "TERM": "dumb"})
    return result.exit_code, result.output


def test_version_prints_the_package_version() -> None:
    code, output = invoke("--version")

    assert code == 0
    assert output.strip() == f"tidal {tidal.__version__}"
    assert tidal.__version__ == version("tidal")  # the module and the package agree


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["init"], {"--example": "NAME", "--label": "COLUMN", "--force": ""}),
        (["up"], {"--workspace": "DIR", "--port": "PORT", "--serve": "", "--verbose": ""}),
        (["rollout", "start"], {"--bake-s": "NUMBER", "--watch": "", "--strategy": "NAME"}),
        (["monitor", "report"], {"--out": "FILE", "--json": ""}),
        (["predict"], {"--file": "FILE", "--url": "URL", "--api-key": "KEY"}),
        (["serve"], {"--host": "HOST", "--port": "PORT", "--model-dir": "DIR"}),
        (["ingest"], {"--workspace": "DIR", "--json": ""}),
    ],
)
def test_help_shows_flags_bare_and_values_by_a_word(
    command: list[str], expected: dict[str, str]
) -> None:
    code, output = invoke(*command, "--help")

    assert code == 0, output
    assert not re.search(r"<(bool|str|int|float|path|list)", output), output
    for option, metavar in expected.items():
        line = next(line for line in output.splitlines() if f" {option} " in line)
        words = [w for w in line.split(option, 1)[1].strip(" │").split() if not w.startswith("-")]
        if metavar:
            assert words[0] == metavar, line
        else:  # a flag: its help text follows directly, no type or word in capitals between
            assert not (words[0].isupper() or words[0].startswith("<")), line


def test_queue_line_reads_as_counts() -> None:
    assert queue_line({}) == "empty"
    assert queue_line({"done": 3}) == "3 done"
    assert queue_line({"failed": 1, "done": 3, "queued": 2}) == "2 queued, 3 done, 1 failed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_prints_the_queue_cursor_and_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDAL_SERVING__PORT", str(free_port()))  # nothing listens there
    init_workspace(tmp_path / "ws", task="tabular", label="y")
    ws = Workspace.open(tmp_path / "ws")
    ws.store.put_bytes(f"{INCOMING}/batch-1.csv", b"x,y\n1,a\n")
    source = PollingSource(ws.store, ws.state, INCOMING, settle_s=0.0)
    landed = source.poll()
    source.ack(landed)
    for n in range(3):
        run, _ = ws.state.enqueue(ws.model_name, f"file:///f{n}.csv", f"sha{n}", "validate")
        if n < 2:
            ws.state.finish(run.id, decision="promoted", record={"version": str(n + 1)})
    ws.state.event("deploy", "deployed v2", model=ws.model_name)

    code, text = invoke("status", "--workspace", str(ws.root))
    json_code, raw = invoke("status", "--workspace", str(ws.root), "--json")

    assert code == 0, text
    assert re.search(r"^queue\s+1 queued, 2 done$", text, re.M), text
    assert "{'done'" not in text
    assert re.search(r"^cursor\s+incoming/batch-1\.csv \(modified \d{4}-\d\d-\d\d ", text, re.M)
    assert re.search(r"^events$", text, re.M)
    assert re.search(r"^\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+deploy\s+deployed v2$", text, re.M)
    assert "queued run 3 for file:///f2.csv" in text
    assert json_code == 0, raw
    data = json.loads(raw)
    assert data["queue"] == {"done": 2, "queued": 1}
    assert data["cursor"]["key"] == "incoming/batch-1.csv"
    assert data["cursor"]["mtime"] == landed[0].mtime
    assert data["events"][0]["message"] == "deployed v2"


def test_status_of_a_fresh_workspace_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDAL_SERVING__PORT", str(free_port()))
    init_workspace(tmp_path / "ws", task="tabular", label="y")

    code, text = invoke("status", "--workspace", str(tmp_path / "ws"))

    assert code == 0, text
    assert re.search(r"^queue\s+empty$", text, re.M)
    assert re.search(r"^cursor\s+nothing picked up from incoming/ yet$", text, re.M)
