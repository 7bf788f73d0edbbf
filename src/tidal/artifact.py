"""Model artifacts: a folder of files plus ``tidal-model.json``, its manifest.

The manifest names the flavor (how to load it), the task, the input features, the label
classes and the sha256 of every file. Loading an artifact means: check the manifest's own
sha256 against the one the registry recorded, check every file against the manifest, then hand
the folder to the flavor's predictor. Nothing is loaded whose hash does not match, and no flavor
loads pickle.

Flavors are resolved from the table below on first use, so serving imports only what it serves.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tidal.errors import ModelLoadError
from tidal.storage import sha256_file

if TYPE_CHECKING:
    from tidal.training.recipes.base import Predictor

MANIFEST = "tidal-model.json"
FORMAT_VERSION = 1

FLAVORS: dict[str, str] = {
    "python": "tidal.training.recipes.custom:CustomPredictor",
    "sklearn": "tidal.training.recipes.tabular:TabularPredictor",
    "transformers": "tidal.training.recipes.text:TextPredictor",
}

FeatureType = Literal["number", "integer", "string", "boolean"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType


@dataclass
class Manifest:
    flavor: str
    task: str
    features: list[Feature]
    labels: list[Any]
    label_column: str
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256
    params: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    format: int = FORMAT_VERSION

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["features"] = [Feature(**f) for f in data["features"]]
        return cls(**data)


def write_manifest(folder: Path, manifest: Manifest) -> str:
    """Hash every file in ``folder`` into the manifest, write it last; return its sha256."""
    manifest.files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    path = folder / MANIFEST
    path.write_text(manifest.to_json(), encoding="utf-8")
    return sha256_file(path)


def file_stamp(path: Path) -> list[int]:
    """What changes when a file is rewritten: device, inode, size, modification time (ns)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def verify(
    folder: Path,
    manifest_sha256: str | None = None,
    trusted: Mapping[str, list[int]] | None = None,
) -> Manifest:
    """Check the manifest (against ``manifest_sha256`` when given) and every file it lists.

    ``trusted`` maps files already hashed by the caller to their ``file_stamp`` then; a file
    whose stamp is unchanged is not hashed again (a worker trusts its gateway's check, which
    saves a text model's cold start 0.2 s of hashing per 90 MB)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelLoadError(
            f"{folder} is not a Tidal model: {MANIFEST} is missing",
            hint="a model folder is written by a training recipe; see docs on custom models",
        )
    actual = sha256_file(path)
    if manifest_sha256 is not None and actual != manifest_sha256:
        raise ModelLoadError(
            f"{path} has sha256 {actual[:12]}…, the registry recorded {manifest_sha256[:12]}…; "
            "refusing to load a model that changed after it was registered"
        )
    manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
    for rel, expected in manifest.files.items():
        file = folder / rel
        if not file.is_file():
            raise ModelLoadError(f"model file {file} listed in the manifest is missing")
        if trusted is not None and trusted.get(rel) == file_stamp(file):
            continue  # hashed by the caller, unchanged since
        got = sha256_file(file)
        if got != expected:
            raise ModelLoadError(
                f"model file {file} has sha256 {got[:12]}…, the manifest says {expected[:12]}…; "
                "refusing to load it"
            )
    if manifest.flavor not in FLAVORS:
        raise ModelLoadError(
            f"unknown model flavor {manifest.flavor!r}; known: {', '.join(sorted(FLAVORS))}"
        )
    return manifest


def verify_stamped(
    folder: Path, manifest_sha256: str | None = None
) -> tuple[Manifest, dict[str, list[int]]]:
    """``verify``, and the stamps of the files it hashed (taken before hashing, kept only for
    files whose stamp did not change while they were hashed)."""
    before = {p.relative_to(folder).as_posix(): file_stamp(p) for p in _files(folder)}
    manifest = verify(folder, manifest_sha256)
    after = {p.relative_to(folder).as_posix(): file_stamp(p) for p in _files(folder)}
    return manifest, {rel: stamp for rel, stamp in before.items() if after.get(rel) == stamp}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST]


def flavor_class(flavor: str) -> type[Predictor]:
    module, _, name = FLAVORS[flavor].partition(":")
    cls: type[Predictor] = getattr(importlib.import_module(module), name)
    return cls


def load_predictor(
    folder: Path,
    manifest_sha256: str | None = None,
    trusted: Mapping[str, list[int]] | None = None,
) -> Predictor:
    """Verify ``folder`` and return its flavor's predictor, set up and ready."""
    manifest = verify(folder, manifest_sha256, trusted)
    predictor = flavor_class(manifest.flavor)(folder, manifest)
    predictor.setup()
    return predictor
