"""Alerts to real HTTP receivers on 127.0.0.1: the signature checked on the receiving side, a
failing or slow receiver recorded without reaching the sender, TLS verified on a pinned address,
and a process that exits right after alerting still delivers."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tidal.alerts import Alerter, find_alert, send_alert, verify
from tidal.config import AlertsConfig, Config
from tidal.state import State
from tidal.workspace import Workspace

SECRET = "receiver-shares-this-9c2e"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature verified on the receiving side, as a receiver must


@dataclass
class Receiver:
    """An HTTP server answering each POST with the next of ``statuses``, then ``status``."""

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    location: str | None = None
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signature = self.headers.get("X-Tidal-Signature")
                timestamp = self.headers.get("X-Tidal-Timestamp")
                signed = verify(SECRET.encode(), body, signature, timestamp)
                headers = dict(self.headers.items())
                receiver.requests.append(Request(self.path, headers, body, signed))
                time.sleep(receiver.delay_s)
                self.send_response(
                    receiver.statuses.pop(0) if receiver.statuses else receiver.status
                )
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(receiver: Receiver, tls: ssl.SSLContext | None = None) -> Receiver:
        server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.handler())
        server.daemon_threads = True
        if tls:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        receiver.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_port}"
        return receiver

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def config(**alerts: Any) -> AlertsConfig:
    return AlertsConfig.model_validate({"allowed_hosts": ["127.0.0.1"], "secret": SECRET} | alerts)


def delivered(state: State, alert_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The alert's record once no sink is pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = find_alert(state, alert_id)
        if record is not None and not record["data"]["pending"]:
            return dict(record["data"])
        time.sleep(0.05)
    raise AssertionError(f"{alert_id} still pending after {timeout_s} s: {record}")


def test_a_signed_alert_reaches_the_receiver_through_send_alert(tmp_path: Path, serve: Any) -> None:
    hook, slack = serve(Receiver()), serve(Receiver())
    alerts = config(
        webhooks=[hook.url + "/hooks/tidal?team=ml"], slack_webhooks=[slack.url + "/T0/B0/tok"]
    )
    ws = Workspace(tmp_path, Config(project="churn", alerts=alerts))
    alert_id = send_alert(ws, "drift", "text drift on review", key="review", data={"mmd": 0.42})

    record = delivered(ws.state, alert_id)
    port = hook.url.rsplit(":", 1)[1]
    assert record["sent_to"] == [
        "log",
        f"webhook[0] 127.0.0.1:{port}",
        f"slack[0] 127.0.0.1:{slack.url.rsplit(':', 1)[1]}",
    ]
    assert record["failed"] == {}
    (request,) = hook.requests
    assert request.signed and request.path == "/hooks/tidal?team=ml"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert body["id"] == alert_id and body["model"] == "churn"
    assert (body["kind"], body["key"], body["data"]) == ("drift", "review", {"mmd": 0.42})
    (posted,) = slack.requests
    assert posted.body == f'{{"text": "*drift*: text drift on review ({alert_id})"}}'.encode()

    # the same alert within alerts.dedup_s: counted, not sent again
    assert send_alert(ws, "drift", "text drift on review, still", key="review") == alert_id
    time.sleep(0.3)
    assert len(hook.requests) == 1 and find_alert(ws.state, alert_id)["data"]["repeated"] == 1  # type: ignore[index]


def test_a_receiver_with_another_secret_refuses_the_request(serve: Any, tmp_path: Path) -> None:
    receiver = serve(Receiver())
    alerter = Alerter(
        config(webhooks=[receiver.url], secret="not-the-receivers-secret"), State(tmp_path / "s.db")
    )
    alerter.send("drift", "x")
    alerter.flush(10)
    (request,) = receiver.requests
    assert not request.signed
    assert not verify(SECRET.encode(), request.body, None, request.headers["X-Tidal-Timestamp"])


def test_a_failing_receiver_is_retried_recorded_and_never_waited_for(
    serve: Any, tmp_path: Path
) -> None:
    broken = serve(Receiver(status=500, delay_s=0.5))
    state = State(tmp_path / "state.db")
    alerter = Alerter(config(webhooks=[broken.url]), state, attempts=3, backoff_s=0.01)
    started = time.monotonic()
    alert_id = alerter.send("rollout_rolled_back", "rollout 4 rolled back")
    assert time.monotonic() - started < 0.4  # the receiver takes 0.5 s per try
    assert find_alert(state, alert_id)["data"]["pending"] == [f"webhook[0] {broken.url[7:]}"]  # type: ignore[index]
    alerter.flush(30)
    record = delivered(state, alert_id)
    assert len(broken.requests) == 3 and all(r.signed for r in broken.requests)
    assert record["failed"] == {f"webhook[0] {broken.url[7:]}": "HTTP 500 after 3 attempts"}
    assert record["sent_to"] == ["log"]


def test_a_closed_port_fails_one_sink_and_not_the_others(serve: Any, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    working = serve(Receiver())
    state = State(tmp_path / "state.db")
    urls = [f"http://127.0.0.1:{closed}/", working.url]
    alerter = Alerter(config(webhooks=urls), state, attempts=2, backoff_s=0.01)
    alert_id = alerter.send("drift", "feature age drifted")
    alerter.flush(30)
    record = delivered(state, alert_id)
    (reason,) = record["failed"].values()
    assert record["failed"] == {f"webhook[0] 127.0.0.1:{closed}": reason}
    assert reason.startswith("ConnectionRefusedError") and reason.endswith("after 2 attempts")
    assert record["sent_to"] == ["log", f"webhook[1] {working.url[7:]}"]
    assert len(working.requests) == 1


def test_a_slow_receiver_times_out(serve: Any, tmp_path: Path) -> None:
    slow = serve(Receiver(delay_s=1.5))
    state = State(tmp_path / "state.db")
    alerter = Alerter(config(webhooks=[slow.url], timeout_s=0.2), state, attempts=2, backoff_s=0.01)
    started = time.monotonic()
    alert_id = alerter.send("drift", "feature age drifted")
    alerter.flush(30)
    assert time.monotonic() - started < 1.5
    (reason,) = delivered(state, alert_id)["failed"].values()
    assert reason == "TimeoutError: timed out after 2 attempts"


def test_a_redirect_to_another_allowed_receiver_is_not_followed(serve: Any, tmp_path: Path) -> None:
    target = serve(Receiver())
    redirecting = serve(Receiver(status=307, location=target.url + "/elsewhere"))
    state = State(tmp_path / "state.db")
    alerter = Alerter(config(webhooks=[redirecting.url]), state)
    alert_id = alerter.send("drift", "feature age drifted")
    alerter.flush(30)
    (reason,) = delivered(state, alert_id)["failed"].values()
    assert reason == f"refused: HTTP 307 redirect to {target.url[7:]} not followed"
    assert len(redirecting.requests) == 1 and target.requests == []


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only it): a certificate for hooks.example.com."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("hooks.example.com")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


def test_https_goes_to_the_checked_address_and_verifies_the_name(
    serve: Any, tmp_path: Path
) -> None:
    """hooks.example.com has no DNS here: only the pinned, checked address can reach it."""
    server_tls, client_tls = self_signed(tmp_path)
    receiver = serve(Receiver(), tls=server_tls)
    port = receiver.url.rsplit(":", 1)[1]
    url = f"https://hooks.example.com:{port}/hook"
    alerts = config(webhooks=[url], allowed_hosts=["hooks.example.com", "127.0.0.1"])
    state = State(tmp_path / "state.db")

    def resolve(host: str, port: int) -> list[str]:
        assert host == "hooks.example.com"
        return ["127.0.0.1"]

    trusting = Alerter(alerts, state, tls=client_tls, resolve=resolve)
    ok_id = trusting.send("drift", "over TLS", key="1")
    trusting.flush(30)
    assert delivered(state, ok_id)["failed"] == {}
    (request,) = receiver.requests
    assert request.signed and request.headers["Host"] == f"hooks.example.com:{port}"

    by_address = config(webhooks=[receiver.url], allowed_hosts=["127.0.0.1"])
    for alerter in (
        Alerter(alerts, state, resolve=resolve),  # the system's CAs do not know the certificate
        Alerter(by_address, state, tls=client_tls),  # it names hooks.example.com, not the IP
    ):
        bad_id = alerter.send("drift", "over TLS", key=str(id(alerter)))
        alerter.flush(30)
        (reason,) = delivered(state, bad_id)["failed"].values()
        assert reason.startswith("refused: TLS certificate")
    assert len(receiver.requests) == 1


def test_a_process_exiting_right_after_an_alert_still_delivers_it(
    serve: Any, tmp_path: Path
) -> None:
    """The first try fails: the retry, 0.5 s later, happens only if exiting waits for it."""
    receiver = serve(Receiver(statuses=[503]))
    (tmp_path / "tidal.yaml").write_text(
        "project: churn\nalerts:\n"
        f"  webhooks: ['{receiver.url}/x']\n  allowed_hosts: ['127.0.0.1']\n"
    )
    script = (
        "import sys; from pathlib import Path; from tidal.alerts import send_alert; "
        "from tidal.workspace import Workspace; "
        "print(send_alert(Workspace.open(Path(sys.argv[1])), 'drift', 'from a short process'))"
    )
    env = {"TIDAL_ALERTS__SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    alert_id = done.stdout.strip()
    assert [r.signed and alert_id in r.body.decode() for r in receiver.requests] == [True, True]
    record = find_alert(State(tmp_path / ".tidal" / "state.db"), alert_id)
    assert record is not None
    assert (record["data"]["sent_to"][1:], record["data"]["pending"]) == (
        [f"webhook[0] {receiver.url[7:]}"],
        [],
    )
    assert SECRET not in done.stderr
