"""Checkpoint folders: sealed atomically, verified before use, pruned, mirrored marker-last."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

import toy
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


# -- pickle-format state: sealed sha256 first, then weights_only ----------------------------


def torch_state(step: int):
    """A checkpoint as the Trainer writes it: weights, optimizer, scheduler, numpy RNG."""

    def write(folder: Path) -> None:
        import numpy as np
        import torch

        (folder / "model.safetensors").write_bytes(b"weights-%d" % step)
        torch.save(
            {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}, folder / "optimizer.pt"
        )
        torch.save({"last_epoch": step, "_last_lr": [1e-4]}, folder / "scheduler.pt")
        torch.save(
            {"python": (3, (1, 2), None), "numpy": np.random.get_state()}, folder / "rng_state.pth"
        )

    return write


def plant(path: Path, canary: Path, *, as_zip: bool) -> None:
    """Replace the checkpoint's optimizer.pt with a payload that would create ``canary``."""
    import pickle

    import torch

    if as_zip:
        torch.save(toy.Payload(canary), path / "optimizer.pt")
    else:
        (path / "optimizer.pt").write_bytes(pickle.dumps(toy.Payload(canary)))


def test_real_trainer_state_is_loadable(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    path = checkpoints.write(tmp_path, 10, torch_state(10))
    checkpoints.check_loadable(path)
    assert checkpoints.latest_loadable(tmp_path) == path


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch.save", "raw pickle"])
def test_a_code_payload_is_refused_by_sha_and_when_resealed_by_weights_only(
    tmp_path: Path, as_zip: bool
) -> None:
    torch = pytest.importorskip("torch")
    canary = tmp_path / "payload-ran"
    folder = tmp_path / "ck"
    older = checkpoints.write(folder, 10, torch_state(10))
    newest = checkpoints.write(folder, 20, torch_state(20))

    # the payload is live: an unrestricted load would run it
    probe = tmp_path / "probe"
    probe.mkdir()
    plant(probe, tmp_path / "probe-ran", as_zip=as_zip)
    with contextlib.suppress(RuntimeError):  # a raw pickle runs, then fails torch's magic
        torch.load(probe / "optimizer.pt", weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    # 1. swapped in after sealing: its sha256 no longer matches the marker
    plant(newest, canary, as_zip=as_zip)
    with pytest.raises(checkpoints.UnsafeCheckpoint, match="sha256"):
        checkpoints.check_loadable(newest)
    refused: list[dict[str, str]] = []
    assert checkpoints.latest_loadable(folder, refused.append) == older
    assert refused[0]["event"] == "checkpoint_refused"
    assert refused[0]["checkpoint"] == str(newest)

    # 2. resealed with a marker that lists the payload's own sha256: weights_only refuses it
    staged = folder / "restaged"
    shutil.copytree(newest, staged)
    (staged / MARKER).unlink()
    resealed = checkpoints.seal(staged, folder, 20)
    assert checkpoints.verify(resealed)  # the hashes match now
    with pytest.raises(checkpoints.UnsafeCheckpoint, match="weights_only=True"):
        checkpoints.check_loadable(resealed)
    refused.clear()
    assert checkpoints.latest_loadable(folder, refused.append) == older
    assert "weights_only=True" in refused[0]["reason"]
    assert not canary.exists()


def test_an_unlisted_pickle_file_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = checkpoints.write(tmp_path, 10, torch_state(10))
    torch.save({"scale": 1.0}, path / "scaler.pt")  # harmless content, but never sealed
    with pytest.raises(checkpoints.UnsafeCheckpoint, match=r"scaler\.pt does not match"):
        checkpoints.check_loadable(path)
