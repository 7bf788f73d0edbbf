"""Tidal's exceptions: one root, a small documented tree, and the exit codes they map to.

    TidalError                      exit 1   something went wrong inside Tidal
    ├── UsageError                  exit 2   the command line or a request was wrong
    │   └── ConfigError             exit 2   tidal.yaml or a TIDAL_* variable is invalid
    ├── DataRejected                exit 4   an incoming file failed validation (quarantined)
    ├── NotFound                    exit 2   a model version, run or object does not exist
    ├── ModelLoadError              exit 1   an artifact is missing, corrupt or fails its sha256
    ├── PredictionError             exit 1   a model raised while predicting
    │   └── InvalidInput            exit 2   a prediction request does not fit the model's inputs
    └── RetryableError              exit 75  transient: storage down, lease lost, spot interruption;
        └── StorageUnavailable               running the same command again may succeed

The controller retries a run only after a ``RetryableError`` (with backoff, see controller.py);
any other error fails it at once: a retry would meet the same refusal.

A gate rejection is a decision, not an error: `tidal run` exits 3 for it (see EXIT_REJECTED).
Foreign exceptions are converted at the boundary with ``raise ... from exc``.

Messages say what was wrong, what is allowed, and how to fix it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_INVALID_DATA = 4
EXIT_RETRY = 75  # EX_TEMPFAIL from sysexits.h: "try again later"


class TidalError(Exception):
    """Root of every error Tidal raises on purpose."""

    exit_code = EXIT_INTERNAL
    code = "internal_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class UsageError(TidalError):
    exit_code = EXIT_USAGE
    code = "usage_error"


class ConfigError(UsageError):
    code = "config_error"


class NotFound(TidalError):
    exit_code = EXIT_USAGE
    code = "not_found"


class DataRejected(TidalError):
    """Validation refused a file. ``problems`` lists every reason, not only the first."""

    exit_code = EXIT_INVALID_DATA
    code = "data_rejected"

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None):
        self.problems = problems or [message]
        super().__init__(message, hint=hint)


class ModelLoadError(TidalError):
    code = "model_load_error"


class PredictionError(TidalError):
    code = "prediction_error"


class InvalidInput(PredictionError):
    exit_code = EXIT_USAGE
    code = "invalid_input"


class RetryableError(TidalError):
    exit_code = EXIT_RETRY
    code = "retryable"


class StorageUnavailable(RetryableError):
    code = "storage_unavailable"
