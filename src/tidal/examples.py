"""``tidal init``: a workspace, and example data that tells the story.

The tabular examples come from scikit-learn's bundled data sets (no download): breast_cancer
(binary) and wine (three classes). They are cut into batches that land one after another:
two good batches, one with shuffled labels (a gate must reject it) and one malformed file
(validation must reject it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.config import CONFIG_FILE, Config, render_yaml
from tidal.errors import UsageError

EXAMPLES = {
    "tabular": ("breast_cancer", "diagnosis"),
    "wine": ("wine", "cultivar"),
}


def init_workspace(
    folder: Path,
    *,
    example: str | None = None,
    task: str = "tabular",
    label: str | None = None,
    text_column: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``folder/tidal.yaml`` (and example data); returns what was written."""
    if example is not None and example not in EXAMPLES:
        raise UsageError(
            f"unknown example {example!r}", hint=f"choose one of: {', '.join(sorted(EXAMPLES))}"
        )
    if task not in ("tabular", "text"):
        raise UsageError(f"unknown task {task!r}", hint="use --task tabular or --task text")
    if task == "text" and not text_column:
        raise UsageError("a text task needs --text-column", hint="e.g. --text-column review")
    path = folder / CONFIG_FILE
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="use --force to overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"task": task}
    if example is not None:
        data["label_column"] = EXAMPLES[example][1]
    elif label:
        data["label_column"] = label
    if text_column:
        data["text_column"] = text_column
    config = Config.model_validate(
        {
            "project": _project_name(folder),
            "data": data,
            "training": {"recipe": "text" if task == "text" else "tabular"},
        }
    )
    path.write_text(render_yaml(config), encoding="utf-8")
    written = [str(path)]
    if example is not None:
        written += [str(p) for p in write_example(folder / "data", example)]
    return {
        "workspace": str(folder.resolve()),
        "files": written,
        "project": config.project,
        "label_column": config.data.label_column,
    }


def _project_name(folder: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in folder.resolve().name)
    return name.strip("-") or "tidal"


def example_frame(example: str) -> Any:
    """The example data set as a DataFrame with readable labels, rows shuffled (seed 0)."""
    from sklearn import datasets

    loader, label = EXAMPLES[example]
    bunch = getattr(datasets, f"load_{loader}")(as_frame=True)
    frame = bunch.frame.rename(columns={"target": label})
    names = list(bunch.target_names)
    frame[label] = [str(names[int(i)]) for i in frame[label]]
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def write_example(folder: Path, example: str) -> list[Path]:
    """Cut the example into batch-1, batch-2, batch-3-shuffled-labels and a malformed file."""
    import numpy as np

    frame = example_frame(example)
    label = EXAMPLES[example][1]
    folder.mkdir(parents=True, exist_ok=True)
    n = len(frame)
    first, second = int(n * 0.4), int(n * 0.8)
    batches = {
        "batch-1.csv": frame.iloc[:first],
        "batch-2.csv": frame.iloc[first:second],
    }
    shuffled = frame.iloc[second:].copy()
    shuffled[label] = np.random.default_rng(1).permutation(shuffled[label].to_numpy())
    batches["batch-3-shuffled-labels.csv"] = shuffled
    paths = []
    for name, part in batches.items():
        path = folder / name
        part.to_csv(path, index=False)
        paths.append(path)
    malformed = frame.iloc[:30].drop(columns=[label]).astype(object)
    malformed.iloc[3, 0] = "not-a-number"
    path = folder / "malformed.csv"
    malformed.to_csv(path, index=False)
    paths.append(path)
    return paths
