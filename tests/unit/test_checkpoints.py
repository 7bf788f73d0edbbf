"""Checkpoint folders: sealed atomically, verified before use, pruned, mirrored marker-last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tidal.errors import NotFound
from tidal.storage import Store
from tidal.training import checkpoints
from tidal.training.checkpoints import MARKER


def fill(step: int):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights-%d" % step)
        (folder / "optimizer.pt").write_bytes(b"moments-%d" % step)
        (folder / "sub").mkdir()
        (folder / "sub" / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    return write


def make(folder: Path, *steps: int) -> list[Path]:
    return [checkpoints.write(folder, step, fill(step)) for step in steps]


class RecordingStore(Store):
    """A file:// store that remembers the order of every upload."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put_file(self, key: str, path: Path) -> None:
        self.puts.append(key)
        super().put_file(key, path)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(f"file://{tmp_path / 'bucket'}")


def test_write_seals_with_a_marker_listing_every_file(tmp_path: Path) -> None:
    (path,) = make(tmp_path, 10)
    assert path.name == "checkpoint-10"
    assert not (tmp_path / "checkpoint-10.tmp").exists()
    marker = json.loads((path / MARKER).read_text())
    assert marker["step"] == 10
    assert sorted(marker["files"]) == [
        "model.safetensors",
        "optimizer.pt",
        "sub/trainer_state.json",
    ]
    assert checkpoints.verify(path)
    assert checkpoints.latest_complete(tmp_path) == path


def test_a_failed_fill_leaves_no_checkpoint(tmp_path: Path) -> None:
    make(tmp_path, 10)

    def crash(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoints.write(tmp_path, 20, crash)
    assert checkpoints.latest_complete(tmp_path) == tmp_path / "checkpoint-10"


@pytest.mark.parametrize(
    ("damage", "chosen"),
    [
        ("tmp folder", 20),
        ("no marker", 10),
        ("corrupt marker", 10),
        ("marker of another step", 20),
        ("changed file", 10),
        ("gone", 10),
    ],
)
def test_an_incomplete_or_damaged_checkpoint_is_never_chosen(
    tmp_path: Path, damage: str, chosen: int
) -> None:
    make(tmp_path, 10, 20)
    newest = tmp_path / "checkpoint-20"
    if damage == "tmp folder":
        staged = tmp_path / "checkpoint-30.tmp"
        shutil.copytree(newest, staged)  # newer, and a valid-looking marker inside
    elif damage == "no marker":
        (newest / MARKER).unlink()
    elif damage == "corrupt marker":
        (newest / MARKER).write_text('{"step": 20, "files": {')
    elif damage == "marker of another step":
        shutil.copytree(newest, tmp_path / "checkpoint-30")  # its marker says step 20
    elif damage == "changed file":
        (newest / "model.safetensors").write_bytes(b"bit rot")
    else:
        (newest / "sub" / "trainer_state.json").unlink()
    assert checkpoints.latest_complete(tmp_path) == tmp_path / f"checkpoint-{chosen}"


def test_latest_complete_of_an_empty_or_missing_folder_is_none(tmp_path: Path) -> None:
    assert checkpoints.latest_complete(tmp_path / "missing") is None
    (tmp_path / "checkpoint-5.tmp").mkdir()
    assert checkpoints.latest_complete(tmp_path) is None


def test_prune_keeps_the_newest_complete_and_removes_leftovers(tmp_path: Path) -> None:
    make(tmp_path, 10, 20, 30, 40)
    (tmp_path / "checkpoint-50.tmp").mkdir()
    (tmp_path / "checkpoint-45").mkdir()  # no marker: a killed writer's
    (tmp_path / "unrelated").mkdir()
    checkpoints.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-30",
        "checkpoint-40",
        "unrelated",
    ]


def test_a_step_written_again_replaces_the_old_folder(tmp_path: Path) -> None:
    make(tmp_path, 10)
    (tmp_path / "checkpoint-10" / "stale.txt").write_text("old")
    make(tmp_path, 10)
    assert not (tmp_path / "checkpoint-10" / "stale.txt").exists()
    assert checkpoints.verify(tmp_path / "checkpoint-10")


def test_upload_puts_the_marker_last(tmp_path: Path, store: RecordingStore) -> None:
    (path,) = make(tmp_path / "local", 10)
    key = checkpoints.upload_complete(path, store, "runs/1/checkpoints")
    assert key == "runs/1/checkpoints/checkpoint-10/COMPLETE"
    assert store.puts[-1] == key
    assert sorted(store.puts[:-1]) == [
        "runs/1/checkpoints/checkpoint-10/model.safetensors",
        "runs/1/checkpoints/checkpoint-10/optimizer.pt",
        "runs/1/checkpoints/checkpoint-10/sub/trainer_state.json",
    ]
    assert checkpoints.remote_complete(store, "runs/1/checkpoints") == [10]


def test_an_incomplete_checkpoint_is_not_uploaded(tmp_path: Path, store: RecordingStore) -> None:
    (tmp_path / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(NotFound):
        checkpoints.upload_complete(tmp_path / "checkpoint-10", store, "ck")
    assert store.puts == []


def test_download_latest_round_trip(tmp_path: Path, store: RecordingStore) -> None:
    for path in make(tmp_path / "job-a", 10, 20):
        checkpoints.upload_complete(path, store, "ck")
    # a half-uploaded newer one (the machine died): files but no marker
    store.put_bytes("ck/checkpoint-30/model.safetensors", b"half")
    got = checkpoints.download_latest(store, "ck", tmp_path / "job-b")
    assert got == tmp_path / "job-b" / "checkpoint-20"
    assert checkpoints.verify(got)
    assert (got / "model.safetensors").read_bytes() == b"weights-20"
    assert [p.name for p in (tmp_path / "job-b").iterdir()] == ["checkpoint-20"]


def test_download_skips_a_remote_checkpoint_that_fails_its_hashes(
    tmp_path: Path, store: RecordingStore
) -> None:
    for path in make(tmp_path / "job-a", 10, 20):
        checkpoints.upload_complete(path, store, "ck")
    store.put_bytes("ck/checkpoint-20/optimizer.pt", b"tampered")
    got = checkpoints.download_latest(store, "ck", tmp_path / "job-b")
    assert got == tmp_path / "job-b" / "checkpoint-10"
    assert not (tmp_path / "job-b" / "checkpoint-20.tmp").exists()


def test_download_keeps_a_newer_local_checkpoint(tmp_path: Path, store: RecordingStore) -> None:
    (old,) = make(tmp_path / "job-a", 10)
    checkpoints.upload_complete(old, store, "ck")
    local = tmp_path / "job-b"
    make(local, 20)
    assert checkpoints.download_latest(store, "ck", local) == local / "checkpoint-20"
    assert not (local / "checkpoint-10").exists()


def test_download_from_an_empty_store_is_none(tmp_path: Path, store: RecordingStore) -> None:
    assert checkpoints.download_latest(store, "ck", tmp_path / "job") is None


def test_prune_remote_keeps_the_newest_and_an_upload_in_progress(
    tmp_path: Path, store: RecordingStore
) -> None:
    for path in make(tmp_path / "job", 10, 20, 30):
        checkpoints.upload_complete(path, store, "ck")
    store.put_bytes("ck/checkpoint-15/model.safetensors", b"abandoned")
    store.put_bytes("ck/checkpoint-40/model.safetensors", b"uploading")
    removed = checkpoints.prune_remote(store, "ck", keep=2)
    assert removed == [10, 15]
    assert sorted(checkpoints.remote_checkpoints(store, "ck")) == [20, 30, 40]
    checkpoints.delete_remote(store, "ck")
    assert store.list("ck") == []


def test_uploader_mirrors_the_newest_checkpoint(tmp_path: Path, store: RecordingStore) -> None:
    local = tmp_path / "job"
    uploader = checkpoints.Uploader(local, store, "ck", keep=2)
    assert uploader.sync() is None  # nothing yet
    make(local, 10)
    assert uploader.sync() == 10
    make(local, 20, 30)
    assert uploader.sync() == 30  # only the newest is worth uploading
    puts = len(store.puts)
    assert uploader.sync() == 30 and len(store.puts) == puts  # nothing new: no upload
    make(local, 40)
    assert uploader.stop() == 40
    assert checkpoints.remote_complete(store, "ck") == [30, 40]
    assert uploader.uploaded == [10, 30, 40]
