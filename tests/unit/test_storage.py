"""The object store's contract on a ``file://`` bucket (the S3 side: tests/integration)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tidal.errors import NotFound, StorageUnavailable, UsageError
from tidal.storage import Store, open_store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "bucket"))


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- opening ----------------------------------------------------------------------------------


def test_a_plain_path_opens_as_a_file_uri_and_creates_the_folder(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "new" / "bucket"))
    assert store.root == (tmp_path / "new" / "bucket").as_uri()
    assert store.protocol == "file"
    assert (tmp_path / "new" / "bucket").is_dir()
    assert open_store(store.root + "/").root == store.root


def test_an_unsupported_scheme_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unsupported storage URI"):
        open_store("ftp://example.com/bucket")


def test_an_s3_store_hides_its_credentials() -> None:
    store = open_store("s3://bucket/prefix", key="AKIDEXAMPLE", secret="wJalrXUtnFEMI-secret")
    assert "wJalrXUtnFEMI-secret" not in repr(store)
    assert "AKIDEXAMPLE" not in repr(store)
    assert store.uri("incoming/a.csv") == "s3://bucket/prefix/incoming/a.csv"


# -- keys -------------------------------------------------------------------------------------


def test_uri_and_key_of_are_inverse(store: Store) -> None:
    uri = store.uri("incoming/a.csv")
    assert uri == store.root + "/incoming/a.csv"
    assert store.key_of(uri) == "incoming/a.csv"


@pytest.mark.parametrize("outside", ["file:///elsewhere/a.csv", "s3://bucket/a.csv", "a.csv"])
def test_key_of_refuses_a_uri_outside_the_store(store: Store, outside: str) -> None:
    with pytest.raises(UsageError, match="outside the workspace store"):
        store.key_of(outside)


def test_key_of_refuses_a_sibling_folder_sharing_the_root_as_a_prefix(store: Store) -> None:
    with pytest.raises(UsageError):
        store.key_of(store.root + "-other/a.csv")


@pytest.mark.parametrize("key", ["../escape.csv", "incoming/../../x", "/etc/passwd", "a/.."])
def test_invalid_keys_are_refused_before_any_io(store: Store, tmp_path: Path, key: str) -> None:
    with pytest.raises(UsageError, match="invalid object key"):
        store.put_bytes(key, b"x")
    with pytest.raises(UsageError, match="invalid object key"):
        store.get_bytes(key)
    with pytest.raises(UsageError, match="invalid object key"):
        store.list(key)
    assert not (tmp_path / "escape.csv").exists()


# -- writing and reading ----------------------------------------------------------------------


def test_put_then_get_round_trips_and_put_overwrites(store: Store) -> None:
    store.put_bytes("incoming/a.csv", b"x,y\n1,2\n")
    assert store.get_bytes("incoming/a.csv") == b"x,y\n1,2\n"
    store.put_bytes("incoming/a.csv", b"new")
    assert store.get_bytes("incoming/a.csv") == b"new"
    assert store.sha256("incoming/a.csv") == hashlib.sha256(b"new").hexdigest()


def test_put_file_and_get_file_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "local.bin"
    source.write_bytes(bytes(range(256)) * 5000)  # > 1 chunk
    store.put_file("models/1/model.bin", source)
    target = tmp_path / "down" / "deep" / "model.bin"
    store.get_file("models/1/model.bin", target)
    assert target.read_bytes() == source.read_bytes()


def test_put_file_of_a_missing_local_file_names_that_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no local file"):
        store.put_file("a.csv", tmp_path / "missing.csv")


def test_puts_leave_no_temporary_files(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "local.csv"
    source.write_bytes(b"1,2\n")
    store.put_bytes("incoming/a.csv", b"a")
    store.put_bytes("incoming/a.csv", b"b")
    store.put_file("incoming/b.csv", source)
    assert files_under(tmp_path / "bucket") == ["incoming/a.csv", "incoming/b.csv"]


def test_a_failed_put_keeps_the_old_object_and_leaves_no_temporary_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("incoming/a.csv", b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageUnavailable, match="No space left"):
        store.put_bytes("incoming/a.csv", b"new, half written")
    monkeypatch.undo()
    assert store.get_bytes("incoming/a.csv") == b"old"
    assert files_under(tmp_path / "bucket") == ["incoming/a.csv"]


def test_missing_objects_raise_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no object"):
        store.get_bytes("incoming/missing.csv")
    with pytest.raises(NotFound):
        store.get_file("incoming/missing.csv", tmp_path / "out.csv")
    with pytest.raises(NotFound):
        store.sha256("incoming/missing.csv")
    with pytest.raises(NotFound):
        store.move("incoming/missing.csv", "quarantine/missing.csv")
    with pytest.raises(NotFound, match="no objects under"):
        store.get_dir("models/9", tmp_path / "out")


def test_exists_for_objects_prefixes_and_missing_keys(store: Store) -> None:
    store.put_bytes("models/1/model.bin", b"m")
    assert store.exists("models/1/model.bin")
    assert store.exists("models/1")
    assert not store.exists("models/2")
    assert not store.exists("models/1/other.bin")


# -- listing ----------------------------------------------------------------------------------


def test_list_is_sorted_by_key_with_sizes_and_mtimes(store: Store) -> None:
    before = time.time()
    for key, data in [("incoming/c.csv", b"333"), ("incoming/a.csv", b"1"), ("x/b", b"22")]:
        store.put_bytes(key, data)
    listed = store.list()
    assert [(i.key, i.size) for i in listed] == [
        ("incoming/a.csv", 1),
        ("incoming/c.csv", 3),
        ("x/b", 2),
    ]
    assert all(before - 2 <= i.mtime <= time.time() + 2 for i in listed)
    assert [i.name for i in listed] == ["a.csv", "c.csv", "b"]


def test_list_under_a_prefix_is_relative_to_the_root_and_does_not_match_siblings(
    store: Store,
) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    store.put_bytes("incoming/sub/b.csv", b"2")
    store.put_bytes("incoming2/c.csv", b"3")
    assert [i.key for i in store.list("incoming")] == ["incoming/a.csv", "incoming/sub/b.csv"]
    assert store.list("nothing-here") == []


def test_list_skips_a_put_in_progress(store: Store, tmp_path: Path) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    (tmp_path / "bucket" / "incoming" / "b.csv.tmp-1234abcd").write_bytes(b"half")
    assert [i.key for i in store.list("incoming")] == ["incoming/a.csv"]


def test_a_rewritten_object_gets_a_new_mtime_and_size(store: Store) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    first = store.list("incoming")[0]
    path = Path(store.root.removeprefix("file://")) / "incoming" / "a.csv"
    os.utime(path, (first.mtime - 10, first.mtime - 10))
    store.put_bytes("incoming/a.csv", b"12")
    second = store.list("incoming")[0]
    assert second.size == 2
    assert second.mtime > first.mtime - 10


# -- moving, folders, deleting ----------------------------------------------------------------


def test_move_renames_into_a_new_prefix(store: Store) -> None:
    store.put_bytes("incoming/a.csv", b"data")
    store.move("incoming/a.csv", "quarantine/deep/a.csv")
    assert not store.exists("incoming/a.csv")
    assert store.get_bytes("quarantine/deep/a.csv") == b"data"
    assert [i.key for i in store.list()] == ["quarantine/deep/a.csv"]


def test_put_dir_then_get_dir_round_trips_a_folder(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"weights")
    (src / "tidal-model.json").write_text("{}")
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    store.put_dir("runs/1/model", src)
    assert [i.key for i in store.list("runs/1/model")] == [
        "runs/1/model/model.bin",
        "runs/1/model/tidal-model.json",
        "runs/1/model/tokenizer/vocab.txt",
    ]
    got = store.get_dir("runs/1/model", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in got) == files_under(src)
    assert files_under(tmp_path / "copy") == files_under(src)
    assert (tmp_path / "copy" / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"


def test_delete_removes_an_object_or_a_whole_prefix_and_ignores_missing(store: Store) -> None:
    store.put_bytes("incoming/a.csv", b"1")
    store.put_bytes("runs/1/model/a", b"1")
    store.put_bytes("runs/1/model/sub/b", b"1")
    store.put_bytes("runs/10/model/c", b"1")
    store.delete("incoming/a.csv")
    store.delete("runs/1")
    store.delete("never/there")
    assert [i.key for i in store.list()] == ["runs/10/model/c"]
