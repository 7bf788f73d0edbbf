"""Training checkpoints: atomic folders on the job's disk, mirrored to the object store.

A checkpoint is a folder ``checkpoint-<step>`` holding whatever the trainer saves (model,
optimizer, scheduler, RNG and data-order state) plus a marker, ``COMPLETE``, that lists the
sha256 of every other file. A checkpoint is complete when its marker is present, names its own
step and every listed file matches; anything else is ignored, never resumed from.

On the job's disk a checkpoint is filled in ``checkpoint-<step>.tmp`` (or any staging folder),
the marker is written last and the folder is then renamed into place, so a folder with the final
name is complete unless its files were damaged afterwards (``latest_complete`` checks them).

The Trainer keeps its optimizer, scheduler and RNG state in torch's pickle format. Tidal never
unpickles freely: before a resume, ``check_loadable`` compares each such file with the sha256
sealed in the marker and loads it with ``weights_only=True`` (tensors, containers, numbers and
numpy arrays only; a payload that would import or call anything is refused); the Trainer then
loads the same verified files with ``weights_only=True`` itself.

In the store (``<prefix>/checkpoint-<step>/...``) a checkpoint's files are uploaded one by one
and its marker LAST, so a machine that dies half-way through an upload leaves a folder without a
marker, which readers skip and ``prune_remote`` removes. A download is checked against the marker
before it is renamed into place.

Contract:
    write(folder, step, fill) -> Path    fill a staging folder, seal it as checkpoint-<step>
    seal(staged, folder, step) -> Path   write the marker into ``staged``, rename it into place
    latest_complete(folder) -> Path|None the newest checkpoint whose files match its marker
    check_loadable(path)                 raise UnsafeCheckpoint unless every pickle-format file
                                         (``.pt``, ``.pth``, ...) matches its marker's sha256
                                         and loads with ``torch.load(weights_only=True)``
    latest_loadable(folder, report)      the newest checkpoint that is complete and loadable;
                                         each one refused is reported with its reason
    prune(folder, keep)                  keep the newest ``keep`` complete ones, drop the rest
    upload_complete(path, store, prefix) files first, marker last; returns the marker's key
    download_latest(store, prefix, dir)  the newest complete remote checkpoint, verified
    prune_remote(store, prefix, keep)    the same as ``prune``, in the store
    delete_remote(store, prefix)         every checkpoint of a run, when it is done
    Uploader(local_dir, store, prefix)   the executor's side: mirrors a running job's newest
                                         complete checkpoint to the store, in the background
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidal.errors import ModelLoadError, NotFound, TidalError
from tidal.storage import Store, sha256_file

MARKER = "COMPLETE"
PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"checkpoint-(\d+)")
PICKLED = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"})  # torch.save's format


class UnsafeCheckpoint(ModelLoadError):
    """A checkpoint file that must not be loaded: not sealed, changed, or more than tensors."""

    code = "unsafe_checkpoint"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name; None for anything else (``.tmp`` folders too)."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def name_of(step: int) -> str:
    return f"{PREFIX}{step}"


# -- on the job's disk ------------------------------------------------------------------------


def seal(staged: Path, folder: Path, step: int) -> Path:
    """Hash every file of ``staged`` into its marker, then rename it to ``checkpoint-<step>``."""
    files = {
        p.relative_to(staged).as_posix(): sha256_file(p)
        for p in sorted(staged.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    marker = {"step": step, "files": files, "created_at": time.time()}
    with open(staged / MARKER, "w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    target = folder / name_of(step)
    if target.exists():  # a step written again after a resume: the new one replaces it
        shutil.rmtree(target)
    os.replace(staged, target)
    _fsync_dir(folder)
    return target


def write(folder: Path, step: int, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write a checkpoint into a staging folder, then seal it; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / (name_of(step) + TMP_SUFFIX)
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir()
    fill(staged)
    return seal(staged, folder, step)


def read_marker(path: Path, *, step: int | None = None) -> dict[str, Any] | None:
    """The marker of checkpoint folder ``path`` if it is present, well formed and names the
    folder's step (``step`` when the folder is not under its final name yet)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return None
    if marker.get("step") != (step_of(path.name) if step is None else step):
        return None
    return marker


def verify(path: Path, *, step: int | None = None) -> bool:
    """Whether ``path`` is a complete checkpoint: a valid marker and every file matching it."""
    marker = read_marker(path, step=step)
    if marker is None:
        return False
    for rel, expected in marker["files"].items():
        file = path / rel
        if not file.is_file() or sha256_file(file) != expected:
            return False
    return True


def complete(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the folders with a well-formed marker, oldest first (files unchecked)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        step = step_of(path.name)
        if step is not None and path.is_dir() and read_marker(path) is not None:
            found.append((step, path))
    return sorted(found)


def latest_complete(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` whose files all match its marker, or None."""
    for _, path in reversed(complete(folder)):
        if verify(path):
            return path
    return None


def check_loadable(path: Path) -> None:
    """Raise UnsafeCheckpoint unless every pickle-format file in checkpoint ``path`` is listed
    in its marker, matches the sha256 sealed there and loads with ``weights_only=True``."""
    marker = read_marker(path)
    if marker is None:
        raise UnsafeCheckpoint(
            f"{path} has no valid {MARKER} marker; its files are never loaded",
            hint="delete the folder; training resumes from an older checkpoint or starts anew",
        )
    for file in sorted(path.rglob("*")):
        if not file.is_file() or file.suffix.lower() not in PICKLED:
            continue
        rel = file.relative_to(path).as_posix()
        if marker["files"].get(rel) != sha256_file(file):
            raise UnsafeCheckpoint(
                f"{file} does not match the sha256 sealed in {path / MARKER} (changed or added "
                "after the checkpoint was written); it is never loaded",
                hint="delete the folder; training resumes from an older checkpoint or anew",
            )
        try:
            _load_weights_only(file)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
            raise UnsafeCheckpoint(
                f"{file} holds more than tensors, numbers and arrays: torch.load with "
                f"weights_only=True refused it ({type(exc).__name__}: {str(exc)[:200]})",
                hint="a checkpoint's state files are only ever loaded with weights_only=True; "
                "delete the folder",
            ) from exc


def _load_weights_only(file: Path) -> None:
    import importlib

    import numpy as np
    import torch

    # the RNG state holds numpy arrays: allow exactly the globals that rebuild them
    rebuild = importlib.import_module("numpy._core.multiarray")._reconstruct
    allowed = [rebuild, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        torch.load(file, map_location="cpu", weights_only=True)


def latest_loadable(
    folder: Path, report: Callable[[dict[str, Any]], None] = lambda event: None
) -> Path | None:
    """The newest checkpoint in ``folder`` that verifies and passes ``check_loadable``.

    Each newer one passed over is reported as ``{"event": "checkpoint_refused", ...}``.
    """
    for _, path in reversed(complete(folder)):
        try:
            if not verify(path):
                raise UnsafeCheckpoint(f"{path}: a file does not match its sealed sha256")
            check_loadable(path)
        except UnsafeCheckpoint as exc:
            report({"event": "checkpoint_refused", "checkpoint": str(path), "reason": exc.message})
            continue
        return path
    return None


def prune(folder: Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints; remove older ones and leftovers.

    Leftovers are staging folders and folders without a valid marker (a job killed while it
    wrote them). Call it from the process that writes checkpoints, never while it writes one.
    """
    if not folder.is_dir():
        return []
    kept = {path for _, path in complete(folder)[-max(keep, 1) :]}
    removed = []
    for path in folder.iterdir():
        is_checkpoint = step_of(path.name) is not None or path.name.endswith(TMP_SUFFIX)
        if path.is_dir() and is_checkpoint and path not in kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- in the object store ----------------------------------------------------------------------


def remote_checkpoints(store: Store, prefix: str) -> dict[int, set[str]]:
    """Step → relative file names of every checkpoint folder under ``prefix`` (complete or not)."""
    found: dict[int, set[str]] = {}
    for info in store.list(prefix):
        rel = info.key[len(prefix) + 1 :]
        top, _, rest = rel.partition("/")
        step = step_of(top)
        if step is not None and rest:
            found.setdefault(step, set()).add(rest)
    return found


def remote_complete(store: Store, prefix: str) -> list[int]:
    """Steps of the checkpoints under ``prefix`` whose marker was uploaded, oldest first."""
    return sorted(s for s, files in remote_checkpoints(store, prefix).items() if MARKER in files)


def upload_complete(path: Path, store: Store, prefix: str) -> str:
    """Upload the files of checkpoint ``path`` listed in its marker, then the marker itself.

    Raises NotFound when ``path`` is not a complete checkpoint (or vanished while uploading: the
    job prunes old ones); what was uploaded then has no marker and is ignored.
    """
    marker = read_marker(path)
    if marker is None:
        raise NotFound(f"{path} is not a complete checkpoint (no valid {MARKER} marker)")
    base = f"{prefix}/{path.name}"
    for rel in sorted(marker["files"]):
        store.put_file(f"{base}/{rel}", path / rel)
    store.put_file(f"{base}/{MARKER}", path / MARKER)
    return f"{base}/{MARKER}"


def download_latest(store: Store, prefix: str, local_dir: Path) -> Path | None:
    """Bring the newest complete remote checkpoint into ``local_dir``; return its local path.

    A local checkpoint at least as new that verifies is used as it is. A download whose files do
    not match its marker is thrown away and the next older checkpoint is tried.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    local = latest_complete(local_dir)
    local_step = step_of(local.name) if local is not None else None
    for step in reversed(remote_complete(store, prefix)):
        if local_step is not None and local_step >= step:
            return local
        staged = local_dir / (name_of(step) + TMP_SUFFIX)
        if staged.exists():
            shutil.rmtree(staged)
        try:
            store.get_dir(f"{prefix}/{name_of(step)}", staged)
        except NotFound:
            continue  # pruned by someone else meanwhile
        final = local_dir / name_of(step)
        if verify(staged, step=step):
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
            return final
        shutil.rmtree(staged, ignore_errors=True)
    return local


def prune_remote(store: Store, prefix: str, keep: int) -> list[int]:
    """Keep the newest ``keep`` complete remote checkpoints; remove older and incomplete ones.

    An incomplete folder newer than the newest complete one is left alone (an upload may be
    under way). Returns the steps removed.
    """
    found = remote_checkpoints(store, prefix)
    done = sorted(s for s, files in found.items() if MARKER in files)
    if not done:
        return []
    kept = set(done[-max(keep, 1) :])
    newest = done[-1]
    removed = [s for s in sorted(found) if s not in kept and s < newest]
    for step in removed:
        store.delete(f"{prefix}/{name_of(step)}")
    return removed


def delete_remote(store: Store, prefix: str) -> None:
    """Remove every checkpoint of a run (it finished; they are no use any more)."""
    store.delete(prefix)


class Uploader:
    """Mirrors a running job's checkpoints to the store: the newest complete one, marker last.

    ``start()`` runs ``sync()`` every ``interval_s`` seconds on a daemon thread; ``stop()`` ends
    the thread and syncs once more (call it when the job has ended, with ``final_sync=False``
    if it succeeded: its checkpoints are no use then). Store
    errors are kept in ``errors`` and retried on the next round; they never stop the job.
    """

    def __init__(
        self, local_dir: Path, store: Store, prefix: str, *, keep: int, interval_s: float = 1.0
    ) -> None:
        self.local_dir = local_dir
        self.store = store
        self.prefix = prefix
        self.keep = keep
        self.interval_s = interval_s
        self.uploaded: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def sync(self) -> int | None:
        """Upload the newest complete local checkpoint if the store lacks it; its step."""
        with self._lock:
            found = complete(self.local_dir)
            if not found:
                return None
            step, path = found[-1]
            if step in self.uploaded:
                return step
            try:
                if step not in remote_complete(self.store, self.prefix):  # e.g. downloaded
                    upload_complete(path, self.store, self.prefix)
                self.uploaded.append(step)
                prune_remote(self.store, self.prefix, self.keep)
            except NotFound:
                return None  # pruned by the job while uploading; a newer one is there now
            except TidalError as exc:  # storage down: try again next round
                self.errors.append(str(exc))
                return None
            return step

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)
        self._thread.start()

    def stop(self, *, final_sync: bool = True) -> int | None:
        """End the thread; then sync once more unless told not to (the job succeeded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.sync() if final_sync else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()
