"""The two halves of a model type: a ``Recipe`` trains it, a ``Predictor`` serves it.

Recipe contract (runs inside the training job, see ``tidal.training.entrypoint``):
    setup()                      heavy imports and base-model loading, never in __init__
    fit(train, valid, model_dir, ctx) -> dict
                                 train on ``train`` (a DataFrame with the feature columns and
                                 the label column), report progress through ``ctx``, write the
                                 model files into ``model_dir`` and return training metrics;
                                 the entrypoint writes the manifest afterwards
    flavor                       the manifest flavor its artifacts are loaded with

Predictor contract (the serving path; also the contract for custom models):
    __init__(folder, manifest)   cheap: remembers where the files are
    setup()                      loads the verified files (the loader already checked sha256)
    predict(rows) -> list[dict]  ``rows`` are dicts of feature → value, already checked and
                                 coerced against ``manifest.features``; returns one dict per row
                                 with ``label``, ``score`` (probability of that label) and
                                 ``probabilities`` (label → probability), in input order
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd

    from tidal.artifact import Feature, Manifest


@dataclass
class TrainContext:
    """What a recipe may use from its job: its seed, progress reporting, a stop request."""

    seed: int = 42
    checkpoint_dir: Path | None = None
    report: Callable[[dict[str, Any]], None] = lambda event: None
    stop_requested: Callable[[], bool] = lambda: False
    extra: dict[str, Any] = field(default_factory=dict)

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.report({"event": "progress", "step": step, "total": total, **metrics})


class Recipe(ABC):
    name: ClassVar[str]
    flavor: ClassVar[str]

    def __init__(
        self,
        params: dict[str, Any],
        *,
        features: list[Feature],
        label_column: str,
        labels: list[Any],
    ) -> None:
        self.params = params
        self.features = features
        self.label_column = label_column
        self.labels = labels

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Heavy imports and base-model loading."""

    @abstractmethod
    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame | None, model_dir: Path, ctx: TrainContext
    ) -> dict[str, float]:
        """Train, write model files into ``model_dir``, return training metrics."""


class Predictor(ABC):
    # modules the serving launcher imports once, before it forks workers, so that a cold start
    # pays for loading the model and not for importing its libraries
    preload: ClassVar[tuple[str, ...]] = ()

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load the model files."""

    @abstractmethod
    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction dict (label, score, probabilities) per row, in order."""
