"""The object store: one small API over fsspec for ``file://`` and ``s3://`` buckets.

Contract, the same for every backend:
- keys are ``/``-separated paths relative to the store's root URI; no leading slash;
- ``put_*`` is atomic and overwrites: a reader sees the old object or the new one, never half
  (local files are written beside the target and renamed; an S3 PUT is atomic by itself);
- ``get_*`` of a missing key raises ``NotFound``; a store that cannot be reached, refuses the
  credentials or has no such bucket raises ``StorageUnavailable`` (retryable);
- ``list`` returns every object under a prefix, sorted by key, with size and modification time;
  it always asks the server (no listing cache), so it sees what other processes wrote.

s3fs is imported on first use of an ``s3://`` URI, never by ``import tidal``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tidal.errors import NotFound, StorageUnavailable, UsageError

CHUNK = 1 << 20
# the name of a local put in progress: the target's name, ".tmp-" and 8 hex digits (_local_temp)
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a put in progress (``x.csv.tmp-1a2b3c4d``), not an object."""
    return _TEMP_NAME.search(name) is not None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """A bucket (or a folder playing one) addressed by ``root`` URI."""

    def __init__(self, root: str, *, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.root = root.rstrip("/")
        self.protocol = root.split("://", 1)[0] if "://" in root else "file"
        self._path = root.split("://", 1)[1] if "://" in root else root
        self.fs = fsspec.filesystem(self.protocol, **(storage_options or {}))
        # errors the S3 client lets through untranslated: endpoint down, no credentials, ...
        self._transport_errors: tuple[type[BaseException], ...] = ()
        if self.protocol == "file":
            Path(self._path).mkdir(parents=True, exist_ok=True)
        elif self.protocol == "s3":
            import aiohttp
            from botocore.exceptions import BotoCoreError, ClientError

            self._transport_errors = (BotoCoreError, ClientError, aiohttp.ClientError)

    def __repr__(self) -> str:  # no credentials in reprs
        return f"Store({self.root!r})"

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}"

    def key_of(self, uri: str) -> str:
        """The key of a full URI inside this store; raises UsageError for a URI outside it."""
        if not uri.startswith(self.root + "/"):
            raise UsageError(f"{uri} is outside the workspace store {self.root}")
        return uri[len(self.root) + 1 :]

    def _full(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise UsageError(f"invalid object key {key!r}: keys are relative and may not use '..'")
        return f"{self._path}/{key}" if key else self._path

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise NotFound(f"no object {self.uri(key)}") from exc
        except PermissionError as exc:
            raise StorageUnavailable(
                f"access denied to {self.uri(key)}: {exc}", hint=self._access_hint()
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise StorageUnavailable(
                f"storage {self.root} unreachable: {exc}", hint=self._access_hint()
            ) from exc
        except Exception as exc:
            if not isinstance(exc, self._transport_errors):
                raise
            raise StorageUnavailable(
                f"storage {self.root} unreachable: {exc}",
                hint="check storage.endpoint_url and the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
            ) from exc

    def _access_hint(self) -> str:
        """How to fix a store that refused access: a folder's rights, or the S3 credentials."""
        if self.protocol == "file":
            return (
                f"check that {self._path} exists and that the user running Tidal may read and "
                "write it (permissions, free disk space, a read-only mount); Tidal retries "
                "with backoff and 'tidal up' picks the run up again once the store answers"
            )
        return (
            "check storage.endpoint_url and the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); Tidal retries with backoff"
        )

    # -- writing ----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._errors(key):
            if self.protocol == "file":
                with _local_temp(full) as tmp, open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            else:
                self.fs.pipe_file(full, data)

    def put_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        if not path.is_file():
            raise NotFound(f"no local file {path} to upload to {self.uri(key)}")
        with self._errors(key):
            if self.protocol == "file":
                with _local_temp(full) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
            else:
                self.fs.put_file(str(path), full)

    def put_dir(self, prefix: str, folder: Path) -> None:
        """Upload every file below ``folder`` under ``prefix`` (files one by one, each atomic)."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)

    def move(self, src: str, dst: str) -> None:
        with self._errors(src):
            if self.protocol == "file":
                os.makedirs(os.path.dirname(self._full(dst)), exist_ok=True)
                os.replace(self._full(src), self._full(dst))
            else:
                self.fs.mv(self._full(src), self._full(dst))

    def delete(self, key: str) -> None:
        with self._errors(key):
            if self.fs.exists(self._full(key)):
                self.fs.rm(self._full(key), recursive=True)

    # -- reading ----------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        with self._errors(key):
            return bool(self.fs.exists(self._full(key)))

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key):
            data: bytes = self.fs.cat_file(self._full(key))
            return data

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            self.fs.get_file(self._full(key), str(path))

    def get_dir(self, prefix: str, folder: Path) -> list[Path]:
        got = []
        for info in self.list(prefix):
            target = folder / info.key[len(prefix) + 1 :]
            self.get_file(info.key, target)
            got.append(target)
        if not got:
            raise NotFound(f"no objects under {self.uri(prefix)}")
        return got

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._full(prefix)
        with self._errors(prefix):
            if self.protocol == "file":
                if not self.fs.exists(base):
                    return []
                found = self.fs.find(base, detail=True)
            else:
                try:  # one listing request; an empty prefix is simply empty
                    found = self.fs.find(base, detail=True)
                except FileNotFoundError as exc:  # only a missing bucket gets here
                    raise StorageUnavailable(
                        f"bucket of {self.root} does not exist: {exc}",
                        hint="create the bucket, or fix storage.uri / storage.endpoint_url",
                    ) from exc
        infos = []
        for path, detail in found.items():
            if detail.get("type") == "directory":
                continue
            if self.protocol == "file":
                if is_temp_name(posixpath.basename(path)):
                    continue  # a put in progress (see put_bytes)
                key = os.path.relpath(path, self._path).replace(os.sep, "/")
            else:
                key = path[len(self._path.rstrip("/")) + 1 :]
            infos.append(
                ObjectInfo(key=key, size=int(detail.get("size") or 0), mtime=_mtime(detail))
            )
        return sorted(infos, key=lambda i: i.key)

    def size(self, key: str) -> int:
        """The object's size in bytes, without reading it."""
        with self._errors(key):
            return int(self.fs.size(self._full(key)))

    def sha256(self, key: str) -> str:
        return sha256_bytes(self.get_bytes(key))


@contextmanager
def _local_temp(full: str) -> Iterator[str]:
    """A temporary path beside ``full``: renamed over it on success, removed on failure."""
    os.makedirs(os.path.dirname(full), exist_ok=True)
    tmp = f"{full}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, full)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _mtime(detail: dict[str, Any]) -> float:
    for name in ("mtime", "LastModified", "last_modified", "created"):
        value = detail.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def open_store(
    uri: str,
    *,
    endpoint_url: str | None = None,
    key: str | None = None,
    secret: str | None = None,
    region: str | None = None,
) -> Store:
    """Open the store at ``uri`` (``file://``, a plain path, or ``s3://``)."""
    if "://" not in uri:
        uri = "file://" + str(Path(uri).resolve())
    protocol = uri.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol == "file":
        uri = "file://" + str(Path(uri[len("file://") :]).resolve())
    elif protocol == "s3":
        try:
            import s3fs  # noqa: F401
        except ImportError as exc:
            raise UsageError("s3:// storage needs s3fs", hint="pip install 'tidal[s3]'") from exc
        client_kwargs: dict[str, Any] = {}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        if region:
            client_kwargs["region_name"] = region
        # no listings cache: objects land from other processes (uploads, other workers), and a
        # stale cached listing would hide them from list() and exists()
        options = {
            "client_kwargs": client_kwargs,
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        if key and secret:
            options.update(key=key, secret=secret)
    else:
        raise UsageError(
            f"unsupported storage URI {uri!r}",
            hint="use file:///path or s3://bucket/prefix in storage.uri",
        )
    return Store(uri, storage_options=options)
