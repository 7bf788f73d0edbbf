"""The model registry: MLflow (SQLite + local artifacts by default, any tracking URI otherwise).

Each candidate becomes an MLflow run (params, metrics, dataset hashes, code version, compute
seconds, the model folder and its decision record as artifacts) and a registered model version
with lineage tags. The aliases ``champion`` (what serves) and ``challenger`` (a candidate being
rolled out) are moved here and nowhere else.

Metric and parameter names reach MLflow through ``metric_key``: a slice named after a user's
file (``test:batch (1).csv``) becomes a name MLflow accepts, the same every time and distinct
for distinct names; the decision record keeps the readable name. MLflow refusing a request
(a 4xx: a bad name, a value too long) is a ``TidalError`` that no retry mends; anything else
(the tracking database locked or unreachable) is a ``RetryableError``.

Idempotent: a version is found by its ``tidal.run_id`` tag before one is created, so a run
resumed after kill -9 never registers twice. The SQLite schema is created once, under a file
lock, before any other use: several processes creating it at once crash in MLflow's migrations.

mlflow is imported on first use; the serving path never imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.errors import NotFound, RetryableError, TidalError

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_RUN = "tidal.run_id"
# what MLflow allows in a metric or parameter name is wider; these never need thought
_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric/parameter name: letters, digits, ``.``, ``-`` and ``:``
    kept, ``_`` doubled, any other character written as ``_`` and its UTF-8 bytes in hex
    (``batch (1).csv`` → ``batch_20_281_29.csv``). One-to-one, so two names never collide."""
    out = []
    for char in name:
        if char in _KEY_SAFE:
            out.append(char)
        elif char == "_":
            out.append("__")
        else:
            out.append("".join(f"_{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str
    source: str
    created_at: float
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "mlflow_run_id": self.run_id,
            "source": self.source,
            "created_at": self.created_at,
            "aliases": self.aliases,
            "tags": self.tags,
        }


class Registry:
    def __init__(self, tracking_uri: str, artifact_root: Path, model_name: str, lock: Path) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.model_name = model_name
        self.lock = lock
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, model={self.model_name!r})"

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            import logging

            from mlflow import MlflowClient

            for name in ("mlflow", "alembic"):  # their INFO lines would drown Tidal's output
                logging.getLogger(name).setLevel(logging.WARNING)
            # MLflow's own progress bars would mix with Tidal's on stderr
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

            self.lock.parent.mkdir(parents=True, exist_ok=True)
            with open(self.lock, "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # first schema creation must not race
                client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
                experiment = client.get_experiment_by_name(self.model_name)
                if experiment is None:
                    self._experiment_id = client.create_experiment(
                        self.model_name, artifact_location=self.artifact_root.resolve().as_uri()
                    )
                else:
                    self._experiment_id = experiment.experiment_id
                try:
                    client.get_registered_model(self.model_name)
                except Exception:
                    client.create_registered_model(
                        self.model_name,
                        description="Registered by Tidal; aliases champion/challenger.",
                    )
            self._client = client
        return self._client

    # -- writing ----------------------------------------------------------------------------

    def _mlflow_run(self, run_id: int, tags: dict[str, str] | None = None) -> Any:
        """The MLflow run of a Tidal run: found by its tag, or created."""
        client = self.client
        assert self._experiment_id is not None
        found = client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{TAG_RUN}` = '{run_id}'", max_results=1
        )
        if found:
            return found[0]
        tags = tags or {TAG_RUN: str(run_id), "mlflow.runName": f"tidal-run-{run_id}"}
        return client.create_run(self._experiment_id, tags=tags)

    def log_training(self, run_id: int, metrics: dict[str, float], step: int) -> None:
        """Stream training metrics (loss, samples/s) to the run's MLflow run while it trains."""
        from mlflow.entities import Metric

        mlflow_run = self._mlflow_run(run_id).info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(
            mlflow_run,
            metrics=[
                Metric(f"train.{metric_key(k)}", float(v), now, step)
                for k, v in sorted(metrics.items())
            ],
        )

    def close_run(self, run_id: int, *, failed: bool) -> None:
        """End the MLflow run of a Tidal run that ended without registering (FAILED or
        KILLED); a run already ended, or never opened, is left as it is."""
        client = self.client
        assert self._experiment_id is not None
        found = client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{TAG_RUN}` = '{run_id}'", max_results=1
        )
        if found and found[0].info.status == "RUNNING":
            client.set_terminated(found[0].info.run_id, "FAILED" if failed else "KILLED")

    def register(
        self,
        *,
        run_id: int,
        model_dir: Path,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        record: dict[str, Any],
    ) -> VersionInfo:
        """Log the candidate as an MLflow run and register it; returns the existing version
        when this Tidal run already registered one."""
        existing = self.find_by_run(run_id)
        if existing is not None:
            return existing
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        run_tags = {**tags, TAG_RUN: str(run_id), "mlflow.runName": f"tidal-run-{run_id}"}
        run = self._mlflow_run(run_id, run_tags)
        mlflow_run = run.info.run_id
        now = int(time.time() * 1000)
        try:
            client.log_batch(
                mlflow_run,
                metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())],
                params=[Param(k, _param(v)) for k, v in sorted(params.items())],
                tags=[RunTag(k, v) for k, v in run_tags.items()],
            )
            client.log_artifacts(mlflow_run, str(model_dir), "model")
            version = client.create_model_version(
                self.model_name,
                source=f"{run.info.artifact_uri}/model",
                run_id=mlflow_run,
                tags={**tags, TAG_RUN: str(run_id)},
                description=f"Tidal run {run_id}: {record.get('decision')}",
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "decision.json"
                path.write_text(
                    json.dumps(
                        record | {"version": str(version.version)},
                        indent=2,
                        sort_keys=True,
                        default=str,
                    )
                )
                client.log_artifact(mlflow_run, str(path))
            client.set_terminated(mlflow_run)
        except Exception as exc:
            if _permanent(exc):
                with contextlib.suppress(Exception):
                    client.set_terminated(mlflow_run, "FAILED")
                raise TidalError(
                    f"MLflow refused to register run {run_id}: {exc}",
                    hint="a retry will not help; report it with the run's 'tidal status'",
                ) from exc
            raise RetryableError(f"registering run {run_id} in MLflow failed: {exc}") from exc
        return self._info(version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def delete_alias(self, alias: str) -> None:
        with contextlib.suppress(Exception):  # not set: nothing to delete
            self.client.delete_registered_model_alias(self.model_name, alias)

    def set_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, version, key, value)

    # -- reading ----------------------------------------------------------------------------

    def find_by_run(self, run_id: int) -> VersionInfo | None:
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' and tags.`{TAG_RUN}` = '{run_id}'"
        )
        return self._info(found[0]) if found else None

    def alias(self, alias: str) -> VersionInfo | None:
        try:
            return self._info(self.client.get_model_version_by_alias(self.model_name, alias))
        except Exception:
            return None

    def version(self, version: str) -> VersionInfo:
        try:
            return self._info(self.client.get_model_version(self.model_name, str(version)))
        except Exception as exc:
            raise NotFound(
                f"model {self.model_name!r} has no version {version!r}",
                hint="'tidal models list' shows the versions",
            ) from exc

    def versions(self) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        # the search leaves aliases out; the registered model has them all, in one call
        aliases = self.client.get_registered_model(self.model_name).aliases or {}
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        infos = (self._info(v, by_version.get(str(v.version))) for v in found)
        return sorted(infos, key=lambda v: int(v.version))

    def run_data(self, info: VersionInfo) -> dict[str, Any]:
        run = self.client.get_run(info.run_id)
        return {"metrics": dict(run.data.metrics), "params": dict(run.data.params)}

    def decision_record(self, info: VersionInfo) -> dict[str, Any] | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(info.run_id, "decision.json", tmp)
            except Exception:
                return None
            result: dict[str, Any] = json.loads(Path(path).read_text())
            return result

    def download(self, info: VersionInfo, target: Path) -> Path:
        """Copy the version's model folder to ``target`` (replaced if it exists)."""
        import shutil

        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            got = Path(self.client.download_artifacts(info.run_id, "model", tmp))
            if target.exists():
                shutil.rmtree(target)
            got.rename(target)
        return target

    def _info(self, mv: Any, aliases: list[str] | None = None) -> VersionInfo:
        return VersionInfo(
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            created_at=mv.creation_timestamp / 1000,
            aliases=sorted(aliases) if aliases is not None else list(mv.aliases or []),
            tags=dict(mv.tags or {}),
        )


def _permanent(exc: BaseException) -> bool:
    """Whether MLflow refused the request itself (a 4xx other than 429): retrying is futile."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:6000]
