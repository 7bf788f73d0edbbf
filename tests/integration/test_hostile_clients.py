"""The endpoint on real uvicorn against hostile clients: deeply nested JSON on every JSON
route, and slow clients that trickle their headers or bodies (slowloris)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tidal.cli import build_endpoint
from tidal.deploy import promote
from tidal.serving.auth import new_key
from tidal.serving.server import BackgroundServer
from tidal.workspace import Workspace
from toy import register_toy_model

KEY, KEY_HASH = new_key()
FEEDBACK_KEY, FEEDBACK_HASH = new_key()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("hostile")
    (home / "tidal.yaml").write_text(
        "project: toy\n"
        "serving:\n"
        "  reload_interval_s: 0.2\n"
        "  max_concurrency: 20\n"
        "  header_timeout_s: 2\n"
        "  body_timeout_s: 2\n"
        f"  api_keys: ['{KEY_HASH}']\n"
        f"  feedback_keys: ['{FEEDBACK_HASH}']\n"
    )
    ws = Workspace.open(home)
    promote(ws, register_toy_model(ws, 1, "good"), reason="first")
    with BackgroundServer(build_endpoint(ws), header_timeout_s=2) as server:
        yield server.url


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_json_nested_up_to_past_the_parser_limit_is_a_400_on_every_route(endpoint: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bodies = {
        "/invocations": lambda d: '{"instances": [{"x": ' + nested(d) + "}]}",
        "/predict": lambda d: nested(d),
        "/v2/models/toy/infer": lambda d: (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": '
            + nested(d)
            + "}]}"
        ),
        "/feedback": lambda d: '{"labels": [{"inference_id": "a", "label": ' + nested(d) + "}]}",
    }
    with httpx.Client(base_url=endpoint, timeout=30) as http:
        for route, body in bodies.items():
            statuses = {}
            key = FEEDBACK_KEY if route == "/feedback" else KEY  # /feedback has its own keys
            headers = auth | {"Authorization": f"Bearer {key}"}
            for depth in range(900, 1101):
                answer = http.post(route, content=body(depth), headers=headers)
                statuses[depth] = answer.status_code
                if answer.status_code == 400:
                    error = answer.json()["error"]
                    message = error if isinstance(error, str) else error["message"]
                    assert "JSON" in message or "deep" in message, message
            assert set(statuses.values()) == {400}, (route, statuses)
        # a shallow body still works
        ok = http.post("/invocations", json={"instances": [{"x": 2}]})
        assert ok.status_code == 200, ok.text


class Trickle:
    """``count`` connections sending one byte every ``every_s`` seconds; ``body`` ones trickle
    the body of a /invocations request whose headers they sent at once, the others trickle
    the headers themselves."""

    def __init__(self, url: str, count: int, *, body: bool, every_s: float = 1.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.count, self.body, self.every_s = count, body, every_s
        self.closed_by_server = 0
        self.answers: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        payload = b'{"instances": [{"x": 1}]}' * 40
        head = (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n"
        )
        socks = []
        for _ in range(self.count):
            sock = socket.create_connection(self.address)
            if self.body:
                sock.sendall(head)
            sock.setblocking(False)
            socks.append(sock)
        stream = payload if self.body else head
        sent = 0
        while not self._stop.is_set() and socks:
            for sock in list(socks):
                try:
                    sock.send(stream[sent % len(stream) : sent % len(stream) + 1])
                except OSError:  # closed by the server
                    self.closed_by_server += 1
                    self._collect(sock)
                    socks.remove(sock)
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                self.closed_by_server += 1
                self.answers.append(data)
                sock.close()
                socks.remove(sock)
            sent += 1
            self._stop.wait(self.every_s)
        for sock in socks:
            sock.close()

    def _collect(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.answers.append(sock.recv(4096))
        sock.close()


@pytest.mark.parametrize("body", [False, True], ids=["headers", "body"])
def test_slow_clients_do_not_starve_ordinary_requests(endpoint: str, body: bool) -> None:
    # 60 slow connections, three times serving.max_concurrency (20)
    with (
        Trickle(endpoint, 60, body=body, every_s=0.5) as slow,
        httpx.Client(base_url=endpoint, timeout=10) as http,
    ):
        time.sleep(1.0)  # every slow request has started
        statuses = []
        for x in range(30):
            statuses.append(
                http.post("/invocations", json={"instances": [{"x": x + 1}]}).status_code
            )
            time.sleep(0.02)
        assert statuses == [200] * 30
        deadline = time.monotonic() + 8  # the 2 s timeouts cut every slow client off
        while slow.closed_by_server < 60 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slow.closed_by_server == 60
        assert all(b" 408 " in answer.split(b"\r\n", 1)[0] for answer in slow.answers if answer)
        assert any(slow.answers)


def test_a_feedback_body_that_never_arrives_is_cut_off_with_408(endpoint: str) -> None:
    host, port = endpoint.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + FEEDBACK_KEY.encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = sock.recv(4096)
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert b"serving.body_timeout_s" in answer
    assert time.monotonic() - started < 6  # body_timeout_s is 2
