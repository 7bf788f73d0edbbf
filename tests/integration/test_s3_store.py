"""The object store's contract on ``s3://``, against a real SeaweedFS; then Tidal end to end on it.

The end-to-end tests drive the installed ``tidal`` command as a user would: the bucket is
configured only through environment variables (TIDAL_STORAGE__URI, TIDAL_STORAGE__ENDPOINT_URL
and the AWS SDK's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), data arrives by a boto3 upload,
and every process started here is stopped by its pid.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tidal.config import load_config
from tidal.errors import NotFound, StorageUnavailable, TidalError
from tidal.overview import status
from tidal.storage import Store, open_store
from tidal.workspace import Workspace

if TYPE_CHECKING:
    from conftest import SeaweedS3  # tests/integration/conftest.py, which starts the server

pytestmark = pytest.mark.s3

TIDAL = str(Path(sys.executable).with_name("tidal"))
LABEL = "diagnosis"  # the label column of `tidal init --example tabular`


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    return seaweed.create_bucket("store")


@pytest.fixture
def store(seaweed: SeaweedS3, bucket: str) -> Store:
    return open_store(f"s3://{bucket}/tidal", **seaweed.store_options())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keys(seaweed: SeaweedS3, bucket: str, prefix: str) -> list[str]:
    pages = seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


# -- the server -------------------------------------------------------------------------------


def test_seaweed_accepts_only_its_generated_credentials(seaweed: SeaweedS3, bucket: str) -> None:
    assert bucket in [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]
    assert seaweed.start_seconds < 30
    attempts: list[Callable[[], object]] = [
        lambda: seaweed.client(secret="wrong-secret").list_objects_v2(Bucket=bucket),
        lambda: seaweed.client(key="nobody", secret="x").put_object(
            Bucket=bucket, Key="evil.txt", Body=b"x"
        ),
        lambda: seaweed.client(key="nobody", secret="x").create_bucket(Bucket="evil-bucket"),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as info:
            attempt()
        assert info.value.response["Error"]["Code"] in (
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
        )
    assert keys(seaweed, bucket, "") == []
    assert "evil-bucket" not in [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]


# -- the Store contract on s3:// --------------------------------------------------------------


def test_put_get_and_list_with_sizes_and_mtimes(store: Store) -> None:
    before = time.time()
    store.put_bytes("incoming/b.csv", b"22")
    store.put_bytes("incoming/a.csv", b"1")
    store.put_bytes("incoming2/c.csv", b"333")
    store.put_bytes("incoming/a.csv", b"overwritten")
    assert store.get_bytes("incoming/a.csv") == b"overwritten"
    listed = store.list("incoming")
    assert [(i.key, i.size) for i in listed] == [("incoming/a.csv", 11), ("incoming/b.csv", 2)]
    # S3 times have one-second resolution
    assert all(before - 2 < i.mtime < time.time() + 2 for i in listed)
    assert [i.key for i in store.list()] == ["incoming/a.csv", "incoming/b.csv", "incoming2/c.csv"]
    assert store.list("nothing-here") == []


def test_keys_are_relative_to_the_prefix_in_the_bucket(
    seaweed: SeaweedS3, store: Store, bucket: str
) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    assert keys(seaweed, bucket, "") == ["tidal/incoming/a.csv"]
    assert store.uri("incoming/a.csv") == f"s3://{bucket}/tidal/incoming/a.csv"
    assert store.key_of(f"s3://{bucket}/tidal/incoming/a.csv") == "incoming/a.csv"


def test_a_listing_sees_what_other_clients_wrote_and_deleted(
    seaweed: SeaweedS3, store: Store, bucket: str
) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    assert [i.key for i in store.list("incoming")] == ["incoming/a.csv"]
    assert not store.exists("incoming/b.csv")
    client = seaweed.client()
    client.put_object(Bucket=bucket, Key="tidal/incoming/b.csv", Body=b"22")
    assert [i.key for i in store.list("incoming")] == ["incoming/a.csv", "incoming/b.csv"]
    assert store.exists("incoming/b.csv")
    client.delete_object(Bucket=bucket, Key="tidal/incoming/a.csv")
    assert [i.key for i in store.list("incoming")] == ["incoming/b.csv"]
    assert not store.exists("incoming/a.csv")


def test_move_exists_delete_and_not_found(store: Store, tmp_path: Path) -> None:
    store.put_bytes("incoming/a.csv", b"data")
    assert store.exists("incoming/a.csv")
    assert store.exists("incoming")  # a prefix with objects under it
    store.move("incoming/a.csv", "quarantine/a.csv")
    assert not store.exists("incoming/a.csv")
    assert store.get_bytes("quarantine/a.csv") == b"data"
    assert [i.key for i in store.list()] == ["quarantine/a.csv"]
    with pytest.raises(NotFound, match="no object"):
        store.get_bytes("incoming/a.csv")
    with pytest.raises(NotFound):
        store.get_file("incoming/a.csv", tmp_path / "a.csv")
    with pytest.raises(NotFound):
        store.move("incoming/missing.csv", "quarantine/missing.csv")
    store.delete("quarantine")
    store.delete("never/there")
    assert store.list() == []


def test_put_dir_then_get_dir_round_trips_a_model_folder(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.bin").write_bytes(os.urandom(3 << 20))
    (src / "tidal-model.json").write_text('{"flavor": "sklearn"}')
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    store.put_dir("_tidal/runs/1/model", src)
    store.put_bytes("_tidal/runs/10/model/other", b"not part of run 1")
    got = store.get_dir("_tidal/runs/1/model", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in got) == [
        "model.bin",
        "tidal-model.json",
        "tokenizer/vocab.txt",
    ]
    for path in got:
        assert path.read_bytes() == (src / path.relative_to(tmp_path / "copy")).read_bytes()
    with pytest.raises(NotFound, match="no objects under"):
        store.get_dir("_tidal/runs/2/model", tmp_path / "none")


# -- failures are Tidal errors, never raw botocore ones ---------------------------------------


def test_wrong_credentials_are_storage_unavailable_with_a_hint(
    seaweed: SeaweedS3, store: Store, bucket: str
) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    bad = open_store(
        f"s3://{bucket}/tidal",
        endpoint_url=seaweed.endpoint_url,
        key=seaweed.key,
        secret="not-the-secret-7f3a",
    )
    calls: list[Callable[[], object]] = [
        lambda: bad.list("incoming"),
        lambda: bad.exists("incoming/a.csv"),
        lambda: bad.get_bytes("incoming/a.csv"),
        lambda: bad.put_bytes("incoming/b.csv", b"2"),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert "AWS_SECRET_ACCESS_KEY" in (info.value.hint or "")
        assert "not-the-secret-7f3a" not in str(info.value)  # the secret is not echoed
    assert [i.key for i in store.list()] == ["incoming/a.csv"]


def test_a_missing_bucket_is_reported_not_listed_as_empty(seaweed: SeaweedS3) -> None:
    store = open_store("s3://no-such-bucket-here/tidal", **seaweed.store_options())
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.list("incoming")


def test_an_unreachable_endpoint_is_storage_unavailable(seaweed: SeaweedS3) -> None:
    closed = free_port()
    store = open_store(
        "s3://bucket/tidal", endpoint_url=f"http://127.0.0.1:{closed}", key="k", secret="s"
    )
    with pytest.raises(StorageUnavailable, match="unreachable") as info:
        store.list("incoming")
    assert isinstance(info.value, TidalError)


def test_credentials_come_from_the_aws_variables_when_not_configured(
    seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{bucket}/tidal", endpoint_url=seaweed.endpoint_url)
    store.put_bytes("incoming/a.csv", b"1")
    assert [i.key for i in store.list()] == ["incoming/a.csv"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageUnavailable):
        open_store(f"s3://{bucket}/tidal", endpoint_url=seaweed.endpoint_url).list()


# -- end to end: tidal init / run / serve / up on a bucket ------------------------------------


@dataclass
class S3Workspace:
    root: Path
    bucket: str
    env: dict[str, str]
    first: dict[str, Any]  # the decision record of `tidal run` on batch-1.csv


def tidal(ws: S3Workspace, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIDAL, *args],
        cwd=ws.root,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def started(ws: S3Workspace, log: Path, *args: str, env: dict[str, str]) -> Iterator[Any]:
    """``tidal ARGS`` in the background (own session); stopped by its pid on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TIDAL, *args],
            cwd=ws.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout_s} s; log:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def s3_workspace(seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> S3Workspace:
    """`tidal init --example tabular`, storage on a bucket, batch-1.csv uploaded and run."""
    root = tmp_path_factory.mktemp("s3ws") / "ws"
    bucket = seaweed.create_bucket("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "AWS_"))}
    env |= seaweed.env() | {
        "TIDAL_STORAGE__URI": f"s3://{bucket}/tidal",
        "TIDAL_STORAGE__ENDPOINT_URL": seaweed.endpoint_url,
        "TIDAL_SERVING__PORT": str(free_port()),
    }
    ws = S3Workspace(root, bucket, env, {})
    init = subprocess.run(
        [TIDAL, "init", str(root), "--example", "tabular"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    seaweed.client().upload_file(
        str(root / "data" / "batch-1.csv"), bucket, "tidal/incoming/batch-1.csv"
    )
    ran = tidal(ws, "run", f"s3://{bucket}/tidal/incoming/batch-1.csv", "--json")
    assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    ws.first = json.loads(ran.stdout)
    return ws


def test_tidal_run_on_a_bucket_promotes_version_1_and_writes_there(
    seaweed: SeaweedS3, s3_workspace: S3Workspace
) -> None:
    ws = s3_workspace
    record = ws.first
    assert record["decision"] == "promoted"
    assert record["version"] == "1"
    assert record["source"] == f"s3://{ws.bucket}/tidal/incoming/batch-1.csv"
    meta = keys(seaweed, ws.bucket, "tidal/_tidal/")
    run_id, dataset = record["run_id"], record["dataset_version"]
    for key in (
        "tidal/_tidal/schema.json",
        "tidal/_tidal/holdout.jsonl",
        f"tidal/_tidal/datasets/{dataset}/train.jsonl",
        f"tidal/_tidal/datasets/{dataset}/test.jsonl",
        f"tidal/_tidal/runs/{run_id}/model/tidal-model.json",
    ):
        assert key in meta, f"{key} not in the bucket: {meta}"
    assert record["training_sets"] == [
        f"s3://{ws.bucket}/tidal/_tidal/datasets/{dataset}/train.jsonl"
    ]
    assert not (ws.root / ".tidal" / "store").exists()  # nothing went to the local store


def test_tidal_serve_answers_with_the_model_trained_from_the_bucket(
    s3_workspace: S3Workspace, tmp_path: Path
) -> None:
    ws = s3_workspace
    with open(ws.root / "data" / "batch-1.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    features = {k: float(v) for k, v in row.items() if k != LABEL}
    url = f"http://127.0.0.1:{ws.env['TIDAL_SERVING__PORT']}"
    log = tmp_path / "serve.log"
    with started(ws, log, "serve", env=ws.env) as proc:

        def ready() -> bool:
            assert proc.poll() is None, f"tidal serve exited:\n{log.read_text()}"
            try:
                return httpx.get(f"{url}/ping", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until("tidal serve was not ready", ready, 30, log)
        response = httpx.post(f"{url}/invocations", json={"instances": [features]}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    assert body["predictions"][0]["label"] in ("malignant", "benign")


def test_tidal_up_polls_the_bucket_and_runs_an_uploaded_object(
    seaweed: SeaweedS3, s3_workspace: S3Workspace, tmp_path: Path
) -> None:
    ws = s3_workspace
    source = f"s3://{ws.bucket}/tidal/incoming/batch-2.csv"

    def finished(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
        for run in runs:
            if run["source"] == source and run["status"] not in ("queued", "running"):
                return run
        return None

    def status_now() -> dict[str, Any]:
        # in-process (the same service function as `tidal status`, the workspace's env): a
        # `tidal status` process every poll would take a core from the run being waited for
        workspace = Workspace(ws.root, load_config(ws.root, environ=ws.env))
        return status(workspace, check_endpoint=False)

    log = tmp_path / "up.log"
    env = ws.env | {"TIDAL_CONTROLLER__POLL_INTERVAL_S": "0.2"}
    with started(ws, log, "up", "--no-serve", env=env) as proc:
        wait_until(
            "tidal up did not start watching", lambda: "watching" in log.read_text(), 30, log
        )
        seaweed.client().upload_file(
            str(ws.root / "data" / "batch-2.csv"), ws.bucket, "tidal/incoming/batch-2.csv"
        )
        wait_until(
            "no finished run for batch-2.csv",
            lambda: finished(status_now()["recent_runs"]),
            150,
            log,
        )
        assert proc.poll() is None, log.read_text()
    shown = tidal(ws, "status", "--json", timeout=60)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    run = finished(report["recent_runs"])
    assert run is not None, report
    assert run["status"] == "done", run
    assert run["decision"] == "promoted", run
    assert run["version"] == "2"
    assert report["champion"]["version"] == "2"
    assert report["storage"] == f"s3://{ws.bucket}/tidal"
    assert report["cursor"]["key"] == "incoming/batch-2.csv"
