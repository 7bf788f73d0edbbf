"""Typed configuration, built once at the edge (CLI or app factory) and passed down.

Precedence, lowest to highest: the defaults below < ``tidal.yaml`` < ``TIDAL_*`` environment
variables < command-line flags. A variable names a key by its path with ``__`` between levels:
``TIDAL_SERVING__PORT=9000`` sets ``serving.port``; values are parsed as YAML scalars.

``render_yaml`` writes the commented ``tidal.yaml`` that ``tidal init`` creates, from the same
models, so the file always lists every key with its default and its meaning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tidal.errors import ConfigError

CONFIG_FILE = "tidal.yaml"
ENV_PREFIX = "TIDAL_"
SECRET_KEYS = frozenset(
    {"key", "secret", "api_keys", "feedback_keys", "webhooks", "slack_webhooks"}
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StorageConfig(_Section):
    uri: str | None = Field(
        None,
        description="Bucket root: file:///path or s3://bucket/prefix. "
        "Empty means file://<workspace>/.tidal/store.",
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (SeaweedFS, MinIO); empty for AWS."
    )
    key: SecretStr | None = Field(
        None, description="S3 access key id; prefer the AWS_ACCESS_KEY_ID variable."
    )
    secret: SecretStr | None = Field(
        None, description="S3 secret key; prefer the AWS_SECRET_ACCESS_KEY variable."
    )
    region: str | None = Field(None, description="S3 region, if the server needs one.")


class DataConfig(_Section):
    task: Literal["tabular", "text"] = Field("tabular", description="tabular or text.")
    label_column: str = Field("label", description="Column holding the label.")
    text_column: str | None = Field(None, description="Text tasks: the column with the text.")
    feature_columns: list[str] | None = Field(
        None, description="Feature columns; empty means every column but the label."
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=0.9,
        description="Share of the first accepted file frozen as the gate's holdout.",
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of each file kept as its test split."
    )
    accumulate: bool = Field(
        True, description="Train on every accepted file so far (false: the new file only)."
    )
    seed: int = Field(42, description="Seed for splits and training.")


class ValidationConfig(_Section):
    min_rows: int = Field(20, ge=1, description="Fewest rows a file may have.")
    max_missing_rate: float = Field(
        0.1, ge=0, le=1, description="Largest share of empty cells allowed in any column."
    )
    max_duplicate_rate: float = Field(
        0.5, ge=0, le=1, description="Largest share of duplicated rows allowed."
    )
    max_label_shift: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Largest total-variation distance between a file's label distribution "
        "and the first accepted file's.",
    )
    allow_new_labels: bool = Field(
        False, description="Accept labels the first accepted file did not have."
    )
    max_file_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Largest share of the accumulated training set one file may bring; a "
        "larger file's train split is sampled down to it (the first file is exempt).",
    )
    max_file_mb: float = Field(
        100.0,
        gt=0,
        description="Largest incoming file in MB (1 MB = 2**20 bytes); a larger one is refused "
        "unread (split it, or raise this limit).",
    )


class SageMakerTrainingConfig(_Section):
    role_arn: str | None = Field(
        None, description="IAM role the training job runs as (arn:aws:iam::ACCOUNT:role/NAME)."
    )
    image_uri: str | None = Field(
        None, description="Training image (ECR URI) built from deploy/Dockerfile; run as 'train'."
    )
    instance_type: str = Field("ml.m5.large", description="Instance type of the training job.")
    instance_count: int = Field(1, ge=1, le=100, description="Instances of the training job.")
    volume_gb: int = Field(30, ge=1, le=16384, description="EBS volume of each instance, in GB.")
    spot: bool = Field(True, description="Managed spot training (up to 90% cheaper, resumable).")
    max_run_s: int = Field(
        3600, ge=1, le=2419200, description="MaxRuntimeInSeconds: training longer is stopped."
    )
    max_wait_s: int | None = Field(
        None,
        ge=1,
        le=2419200,
        description="MaxWaitTimeInSeconds (spot only): training plus waiting for capacity; at "
        "least max_run_s (default 2 × max_run_s).",
    )
    max_retries: int = Field(
        2, ge=1, le=30, description="RetryStrategy.MaximumRetryAttempts of the training job."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags added to each training job (beside Tidal's own)."
    )


class TrainingConfig(_Section):
    recipe: Literal["tabular", "text", "script"] = Field(
        "tabular", description="Training recipe: tabular (scikit-learn), text, script."
    )
    executor: Literal["local", "sagemaker-local", "sagemaker"] = Field(
        "local",
        description="Where training runs: local (a subprocess), sagemaker-local (the SageMaker "
        "training container's entry point as a process under a relocated /opt/ml), sagemaker "
        "(a SageMaker training job; settings under training.sagemaker).",
    )
    sagemaker: SageMakerTrainingConfig = Field(
        default_factory=lambda: SageMakerTrainingConfig(),
        description="SageMaker training jobs (training.executor: sagemaker).",
    )
    channel_format: Literal["jsonl", "csv", "csv_no_header_label_first", "parquet"] = Field(
        "jsonl",
        description="Format of the files a training job finds in its channels: jsonl, csv (with "
        "a header), csv_no_header_label_first (as SageMaker's built-in algorithms expect), "
        "parquet.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Recipe hyperparameters, e.g. {model: logistic_regression} for tabular.",
    )
    timeout_s: int = Field(3600, ge=1, description="A training job running longer is stopped.")
    script: str | None = Field(
        None,
        description="Script recipe: the training script (SageMaker contract), relative to the "
        "workspace, e.g. train.py.",
    )
    source_dir: str | None = Field(
        None, description="Script recipe: folder copied next to the script (default: its folder)."
    )
    channels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra input channels for scripts: name → store URI (file or prefix).",
    )
    checkpoint_every_steps: int = Field(
        200, ge=1, description="Write a checkpoint every this many optimizer steps."
    )
    checkpoint_every_s: float = Field(
        300.0, gt=0, description="... or when this many seconds passed since the last one."
    )
    checkpoints_keep: int = Field(2, ge=1, description="Complete checkpoints kept per run.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses a CUDA GPU (mixed precision) when one is present."
    )
    threads: int = Field(
        1,
        ge=1,
        description="CPU threads of a training job (OpenMP/BLAS); 1 leaves the other cores to the "
        "endpoint and avoids oversubscription on small machines.",
    )


class GateConfig(_Section):
    min_accuracy: float = Field(
        0.7, ge=0, le=1, description="Candidate accuracy floor on every evaluation slice."
    )
    min_macro_f1: float = Field(
        0.6, ge=0, le=1, description="Candidate macro-F1 floor on every evaluation slice."
    )
    tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="How much worse than the champion the candidate may be on the shared data.",
    )
    holdout_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How much worse than the champion the candidate may be on the frozen "
        "holdout alone (0: never worse).",
    )


class RegistryConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; empty means sqlite:///<workspace>/.tidal/mlflow.db."
    )
    model_name: str | None = Field(
        None, description="Registered model name; empty means the project name."
    )


class ServingConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the endpoint binds to.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the endpoint (0: any free port).")
    api_keys: list[str] = Field(
        default_factory=list,
        description="sha256 hashes of API keys ('tidal keys create' prints one).",
    )
    require_key_for_predict: bool = Field(
        False, description="Require an API key on prediction routes too (admin routes always do)."
    )
    trust_pickle: bool = Field(
        False,
        description="UNSAFE: load pickle/joblib models that your own training script wrote "
        "(loading a pickle runs code). Recorded in each version's lineage; refused by default.",
    )
    feedback_keys: list[str] = Field(
        default_factory=list,
        description="sha256 hashes of the keys POST /feedback takes ('tidal keys create --scope "
        "feedback'); admin keys are not taken there.",
    )
    feedback_open: bool = Field(
        False,
        description="UNSAFE: let anyone who reaches the endpoint send labels without a key; "
        "labels can retrain the model.",
    )
    feedback_rate_per_min: int = Field(
        10_000, ge=1, description="Labels one feedback key may send per minute; beyond: 429."
    )
    max_payload_mb: float = Field(4.0, gt=0, description="Largest request body (SageMaker: 4 MB).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send a request's headers within this (slow clients are "
        "cut off, answered 408).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request's body must arrive within this, else 408; a request counts "
        "toward max_concurrency only once its body is in.",
    )
    reload_interval_s: float = Field(
        0.5, gt=0, description="How often the endpoint checks for a new champion."
    )
    idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds without requests after which a model's workers exit (scale to "
        "zero); the next request starts one and waits for it.",
    )
    max_concurrency: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Requests in flight at once (SageMaker: 1-200); beyond it: 429 Retry-After.",
    )
    max_workers: int = Field(
        2, ge=1, le=64, description="Worker processes per model variant, added as load grows."
    )
    worker_idle_s: float = Field(
        30.0,
        gt=0,
        description="An extra worker idle this long exits (the last one waits for idle_timeout_s).",
    )
    launcher_idle_s: float | None = Field(
        None,
        gt=0,
        description="With no worker for this long, the worker launcher exits too (~270 MB "
        "freed); the next request then pays the library import (~0.5-3 s for scikit-learn). "
        "Empty: the launcher stays (a cold start pays for the model load only).",
    )
    memory_mb: int = Field(
        2048,
        ge=16,
        description="Memory one worker may use beyond its launcher (SageMaker: 1024-6144); a "
        "model that needs more fails to start, a worker that grows past it is replaced.",
    )
    worker_threads: int = Field(1, ge=1, description="Compute threads in each worker.")
    start_timeout_s: float = Field(
        120.0, gt=0, description="Longest a worker may take to load its model."
    )
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most rows sent to a worker in one predict call."
    )
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a request waits for others to share its batch; only under load "
        "(a lone request never waits).",
    )
    capture_sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of requests whose inputs and outputs are captured."
    )
    capture_format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="Captured records' file format in the store: jsonl or parquet."
    )
    capture_flush_interval_s: float = Field(
        5.0, gt=0, description="How often captured records are written to the store."
    )


class RolloutConfig(_Section):
    strategy: Literal["all_at_once", "canary", "linear", "blue_green", "shadow", "ab"] = Field(
        "all_at_once",
        description="How a promoted version reaches traffic: all_at_once, canary, linear, "
        "blue_green, shadow (mirrored, never answered) or ab (a fixed split, then a readout).",
    )
    canary_percent: float = Field(
        10.0, gt=0, lt=100, description="canary: share of traffic for the first bake."
    )
    linear_step_percent: float = Field(
        20.0, gt=0, le=100, description="linear: traffic added at each step."
    )
    bake_s: float = Field(
        60.0, gt=0, description="Wait interval of each step, with alarms watched throughout."
    )
    termination_wait_s: float = Field(
        300.0, ge=0, description="After the switch, how long the old version stays ready."
    )
    max_execution_s: float = Field(
        3600.0, gt=0, description="A rollout still running after this long is rolled back."
    )
    shadow_percent: float = Field(
        100.0, gt=0, le=100, description="shadow: share of requests mirrored to the candidate."
    )
    ab_percent: float = Field(50.0, gt=0, lt=100, description="ab: the candidate's share.")
    ab_duration_s: float = Field(600.0, gt=0, description="ab: length of the experiment.")
    sticky_header: str | None = Field(
        None,
        description="Route by this request header (e.g. X-User-Id): one value, one variant.",
    )
    window_s: float = Field(
        10.0, gt=0, description="Alarm evaluation window: alarms look at the last window_s."
    )
    max_error_rate: float | None = Field(
        0.05, ge=0, le=1, description="Alarm: candidate error (5xx) rate above this; empty: off."
    )
    max_p99_ratio: float | None = Field(
        2.0,
        gt=0,
        description="Alarm: candidate latency quantile (p99, lower on small windows) over the "
        "baseline's above this, shown with latency_confidence, on the same window; empty: off.",
    )
    min_latency_margin_ms: float = Field(
        5.0, ge=0, description="Latency alarm: the candidate must also be this much slower."
    )
    latency_quantile: float = Field(
        0.99,
        ge=0.5,
        lt=1,
        description="Latency alarm: the quantile judged when a window has enough requests for "
        "it (p99 needs 757 at 99.9%); smaller windows fall back to p95, p90, p75, p50.",
    )
    latency_confidence: float = Field(
        0.999,
        ge=0.5,
        lt=1,
        description="Latency alarm: confidence that the candidate is slower before it fires.",
    )
    max_prediction_shift: float | None = Field(
        0.2,
        ge=0,
        le=1,
        description="Alarm: total variation distance between candidate and baseline labels.",
    )
    min_samples: int = Field(
        50, ge=1, description="Requests a window needs before an alarm can pass or fire."
    )
    no_data: Literal["extend", "inconclusive"] = Field(
        "extend",
        description="A bake without min_samples requests is extended (up to max_extensions) "
        "or ends inconclusive; it never passes.",
    )
    max_extensions: int = Field(3, ge=0, description="Bake extensions for lack of data.")
    on_lost_evidence: Literal["resume", "rollback"] = Field(
        "resume",
        description="After a controller restart with no stats for the current bake: restart "
        "the bake, or roll back.",
    )
    allow_no_alarms: bool = Field(
        False, description="Allow a rollout with every alarm off (refused otherwise)."
    )


class MonitoringConfig(_Section):
    window_s: float = Field(
        3600.0, gt=0, description="Length of a drift and quality window (seconds)."
    )
    window_rows: int | None = Field(
        None,
        ge=1,
        description="Count windows for drift: each window holds this many captured rows of a "
        "version, in capture order, instead of window_s of time (quality stays per window_s). "
        "A drifted count window stands for the retrain policy until 2 x window_s after its "
        "newest row.",
    )
    psi: float = Field(0.2, gt=0, description="Drift: population stability index above this.")
    ks: float = Field(0.1, gt=0, le=1, description="Drift: Kolmogorov-Smirnov distance above this.")
    js: float = Field(
        0.1, gt=0, le=1, description="Drift of a category or the labels: Jensen-Shannon above this."
    )
    min_samples: int = Field(
        200, ge=1, description="Rows a window needs before drift can pass or fire."
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Alarm when live accuracy (late labels) is below this."
    )
    min_macro_f1: float | None = Field(
        None, ge=0, le=1, description="Alarm when live macro-F1 (late labels) is below this."
    )
    min_labels: int = Field(
        100, ge=1, description="Labelled predictions a version needs before a quality alarm."
    )
    text_auc: float = Field(
        0.75,
        gt=0.5,
        le=1,
        description="Text drift: a classifier telling training texts from served texts (on the "
        "model's own embeddings) with a cross-validated AUC above this.",
    )
    interval_s: float = Field(
        60.0, gt=0, description="How often 'tidal up' checks drift, quality and the retrain policy."
    )


Trigger = Literal["drift", "quality"]


def _all_triggers() -> list[Trigger]:
    return ["drift", "quality"]


class RetrainConfig(_Section):
    enabled: bool = Field(
        True, description="Let a drift or quality alarm start a retrain (within the limits below)."
    )
    triggers: list[Trigger] = Field(
        default_factory=_all_triggers,
        description="Alarms that may start a retrain: drift, quality or both.",
    )
    min_rows: int = Field(
        500, ge=1, description="New labelled rows (late labels joined to served inputs) needed."
    )
    cooldown_s: float = Field(
        21600.0, ge=0, description="Least time between two retrains started by the policy."
    )
    max_runs_per_day: int = Field(
        2, ge=0, description="Budget: retrains the policy may start in any 24 hours."
    )
    max_compute_s_per_day: float = Field(
        7200.0, ge=0, description="Budget: training seconds the policy's retrains may use per 24 h."
    )
    trust_min_score: float = Field(
        0.9,
        ge=0.5,
        le=1,
        description="Late labels are checked on rows the champion predicts with at least this "
        "score: there they should rarely contradict it.",
    )
    trust_margin: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Contradiction rate allowed above the champion's holdout error bound (real "
        "drift) before a key's labels are doubted.",
    )
    trust_alpha: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="Significance of the binomial test that quarantines a key's labels.",
    )


class ControllerConfig(_Section):
    poll_interval_s: float = Field(2.0, gt=0, description="How often incoming/ is listed.")
    lease_s: float = Field(
        30.0, gt=1, description="A run whose owner is silent this long is taken over."
    )
    max_attempts: int = Field(
        8,
        ge=1,
        description="Tries of a run meeting a temporary error (store unreachable, lease lost, "
        "job interrupted), waiting retry_base_s, then twice as long each time (with jitter, at "
        "most retry_max_s) between them; after the last the run fails, and 'tidal up' queues "
        "it again, at most every retry_max_s, while the store answers. Other errors fail at once.",
    )
    retry_base_s: float = Field(
        2.0, gt=0, description="Wait before the second try of a run after a temporary error."
    )
    retry_max_s: float = Field(300.0, gt=0, description="Longest wait between two tries of a run.")
    trigger: Literal["poll", "sqs"] = Field(
        "poll",
        description="How landed files are noticed: poll (list incoming/ every poll_interval_s) "
        "or sqs (S3 or EventBridge events from controller.queue_url; incoming/ is still listed "
        "every reconcile_s, so a lost event never loses a file).",
    )
    queue_url: str | None = Field(
        None, description="SQS queue of S3/EventBridge events (controller.trigger: sqs)."
    )
    reconcile_s: float = Field(
        900.0,
        gt=0,
        description="With event triggers, how often incoming/ is listed anyway, and waiting "
        "training jobs are looked at, in case an event was lost.",
    )
    state_uri: str | None = Field(
        None,
        description="Where the controller's state lives: sqlite:///PATH (default "
        ".tidal/state.db) or dynamodb://TABLE (on-demand table, created when missing).",
    )
    max_inline_mb: float = Field(
        200.0,
        gt=0,
        description="Largest landed file the controller validates and prepares itself.",
    )


class AlertsConfig(_Section):
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts webhooks may reach (exact names or IPs); empty: none may be sent. A "
        "name resolving to an internal address reaches it only if that address is listed too.",
    )
    webhooks: list[str] = Field(
        default_factory=list,
        description="URLs receiving each alert as JSON signed with alerts.secret "
        "(X-Tidal-Signature); https unless the host is loopback.",
    )
    slack_webhooks: list[str] = Field(
        default_factory=list,
        description='Slack-compatible incoming-webhook URLs, sent {"text": ...}.',
    )
    secret: SecretStr | None = Field(
        None, description="Key signing webhook bodies; prefer the TIDAL_ALERTS__SECRET variable."
    )
    dedup_s: float = Field(
        900.0,
        ge=0,
        description="The same alert (kind and key) again within this many seconds is counted, "
        "not sent again; 0 sends every one.",
    )
    timeout_s: float = Field(
        2.0, gt=0, le=30, description="Connect and read timeout of each webhook call."
    )

    @field_validator("webhooks", "slack_webhooks")
    @classmethod
    def _allow_listed(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        from tidal.alerts import check_url

        for url in urls:
            check_url(url, info.data.get("allowed_hosts", []), setting=f"alerts.{info.field_name}")
        return urls

    @field_validator("secret")
    @classmethod
    def _signing_key(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if secret is None and info.data.get("webhooks"):
            raise ValueError(
                "alerts.webhooks are signed: set alerts.secret (or the TIDAL_ALERTS__SECRET "
                "variable) to a random string shared with the receivers"
            )
        return secret


class Config(_Section):
    project: str = Field(
        "tidal", description="Project name; names the MLflow experiment and model."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)  # type: ignore[arg-type]
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    validation: ValidationConfig = Field(default_factory=ValidationConfig)  # type: ignore[arg-type]
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # type: ignore[arg-type]
    gate: GateConfig = Field(default_factory=GateConfig)  # type: ignore[arg-type]
    registry: RegistryConfig = Field(default_factory=RegistryConfig)  # type: ignore[arg-type]
    serving: ServingConfig = Field(default_factory=ServingConfig)  # type: ignore[arg-type]
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)  # type: ignore[arg-type]
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)  # type: ignore[arg-type]
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)  # type: ignore[arg-type]
    controller: ControllerConfig = Field(default_factory=ControllerConfig)  # type: ignore[arg-type]
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # type: ignore[arg-type]

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.project


def load_config(
    workspace: Path,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the config of ``workspace`` from its tidal.yaml, the environment and overrides."""
    path = workspace / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{path} is not valid YAML: {exc}", hint="fix the file or run 'tidal init' again"
            ) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections, not {type(loaded).__name__}"
            )
        data = loaded or {}
    _merge(data, _from_environ(os.environ if environ is None else environ))
    _merge(data, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def _from_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """The ``TIDAL_<SECTION>__<KEY>`` variables as nested settings (``tidal.environ``, with
    pydantic-settings); other ``TIDAL_*`` variables (TIDAL_WORKSPACE, TIDAL_API_KEY) are the
    CLI's, not settings."""
    sections = [f"{ENV_PREFIX}{name}".lower() for name in Config.model_fields]
    given = {
        name: value
        for name, value in environ.items()
        if any(name.lower() == s or name.lower().startswith(s + "__") for s in sections)
    }
    if not given:
        return {}  # the usual case: pydantic-settings is not even imported
    from tidal.environ import read_environ

    return read_environ(Config, given)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _describe(exc: ValidationError, path: Path) -> str:
    lines = [f"invalid configuration (from {path}, TIDAL_* variables or flags):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; see 'tidal init --print-config' for all keys")
        elif any(str(p) in SECRET_KEYS for p in err["loc"]):
            lines.append(f"  {where}: {err['msg']} (value hidden)")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def render_yaml(config: Config) -> str:
    """The commented tidal.yaml for ``config``: every key, its value and what it means."""
    out = [
        "# Tidal workspace configuration. Every key is listed with its default.",
        "# Environment variables override it: TIDAL_<SECTION>__<KEY>,"
        " e.g. TIDAL_SERVING__PORT=9000.",
        "",
    ]
    _render(config, 0, out)
    return "\n".join(out) + "\n"


def _render(model: BaseModel, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            _render(value, indent + 1, out)
            if indent == 0:
                out.append("")
            continue
        if field.description:
            out.append(f"{pad}# {field.description}")
        if isinstance(value, SecretStr):
            value = None  # never write secrets back; point to the variables instead
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False, width=1000)
        out.append(pad + dumped.strip()[1:-1].strip())
