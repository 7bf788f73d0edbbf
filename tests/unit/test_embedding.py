"""Text embedding drift: the model's own token embeddings, the baseline's sketch, the window's
reservoir, and the domain classifier judging them.

The embedder reads a model folder without running it, so these tests use the real
all-MiniLM-L6-v2 folder (it loads in ~0.1 s; building the tiny BERT would import torch, ~9 s)
and the real reviews and debate statements of the sentiment example.
"""

from __future__ import annotations

import json
import shutil
import time
import timeit
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import toy
from tidal.artifact import Feature
from tidal.errors import ModelLoadError
from tidal.monitoring.baseline import Baseline, TextBaseline
from tidal.monitoring.drift import Status, Thresholds, WindowStats, compare
from tidal.monitoring.embedding import (
    DIMS,
    METHOD,
    SKETCH_ROWS,
    Embedder,
    Reservoir,
    domain_auc,
    sketch_vectors,
    text_keys,
)
from toy import minilm_folder, needs_minilm

pytestmark = needs_minilm

FEATURES = [Feature("text", "string")]


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    embedder = Embedder.load(minilm_folder())
    assert embedder is not None
    return embedder


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    """Shuffled reviews (the model's domain) and debate statements (not its domain)."""
    from tidal.examples import out_of_domain_frame, review_frame

    reviews = review_frame()["text"].sample(frac=1.0, random_state=0).tolist()
    return {"reviews": reviews, "debates": out_of_domain_frame()["text"].tolist()}


@pytest.fixture(scope="module")
def baseline(minilm: Embedder, corpus: dict[str, list[str]]) -> Baseline:
    frame = pd.DataFrame({"text": corpus["reviews"][:2000]})
    return Baseline.from_frame(frame, FEATURES, text={"text"}, embedder=minilm)


def test_embeddings_are_normalised_64_dimensional_and_deterministic(minilm: Embedder) -> None:
    texts = ["a gripping, beautifully shot film", "the senate votes on the tax bill", ""]

    vectors = minilm.embed(texts)
    pooled = minilm.pooled(texts)

    assert vectors.shape == (3, DIMS) and vectors.dtype == np.float32
    assert pooled.shape == (3, 384)
    assert np.linalg.norm(pooled, axis=1) == pytest.approx([1.0, 1.0, 0.0], abs=1e-5)
    assert not vectors[2].any()  # a text without tokens embeds as zeros
    # a text's vector does not depend on the batch it came in, nor on special tokens in it
    alone = minilm.embed([texts[1], "[CLS] a gripping, beautifully shot film [SEP]"])
    np.testing.assert_allclose(alone, vectors[[1, 0]], atol=1e-6)
    assert np.array_equal(Embedder.load(minilm_folder()).embed(texts), vectors)  # type: ignore[union-attr]
    assert not np.allclose(minilm.embed(texts, seed=1)[:2], vectors[:2])
    # the projection keeps the geometry: the two texts stay far apart, a paraphrase close
    close = minilm.embed(["a gripping and beautifully shot film"])[0]
    assert float(vectors[0] @ close) > float(vectors[0] @ vectors[1]) + 0.2


def test_loading_the_embedder_is_cheap() -> None:
    started = time.perf_counter()
    Embedder.load(minilm_folder())
    assert time.perf_counter() - started < 1.0  # measured ~0.08 s: 30522 × 384 float32


def test_the_sketch_is_plain_json_and_the_fingerprint_survives_it(
    baseline: Baseline, minilm: Embedder, corpus: dict[str, list[str]]
) -> None:
    feature = baseline.features["text"]
    assert isinstance(feature, TextBaseline) and feature.sketch is not None
    sketch = feature.sketch
    assert {k: sketch[k] for k in ("method", "dims", "seed", "n")} == {
        "method": METHOD,
        "dims": DIMS,
        "seed": 0,
        "n": SKETCH_ROWS,
    }
    vectors = sketch_vectors(sketch)
    assert vectors.shape == (SKETCH_ROWS, DIMS)
    # the vectors are the embeddings of sampled training texts, each once
    training = minilm.embed(corpus["reviews"][:2000])
    nearest = np.abs(vectors[:, None, :] - training[None, :, :]).max(axis=2).argmin(axis=1)
    np.testing.assert_allclose(training[nearest], vectors, atol=1e-6)
    assert len(set(nearest.tolist())) == SKETCH_ROWS

    text = baseline.to_json()
    again = Baseline.from_json(text)
    assert again == baseline and again.fingerprint == baseline.fingerprint
    assert again.to_json() == text and len(text) < 250_000
    plain = Baseline.from_frame(
        pd.DataFrame({"text": corpus["reviews"][:2000]}), FEATURES, text={"text"}
    )
    assert plain.features["text"].sketch is None  # type: ignore[union-attr]
    assert plain.fingerprint != baseline.fingerprint  # a window must know how to embed


def test_merged_reservoirs_are_the_sample_of_all_rows(
    minilm: Embedder, corpus: dict[str, list[str]]
) -> None:
    texts = corpus["reviews"][:1200] + corpus["reviews"][:300]  # 300 texts sent twice
    ids = [["request", i] for i in range(len(texts))]
    whole = Reservoir.of(minilm, texts, ids)
    parts = [Reservoir.of(minilm, texts[a:b], ids[a:b]) for a, b in [(0, 700), (700, 1500)]]

    for merged in (parts[0].merge(parts[1]), parts[1].merge(parts[0])):
        assert np.array_equal(merged.keys, whole.keys)
        np.testing.assert_allclose(merged.vectors, whole.vectors, atol=1e-6)
    assert len(whole) == SKETCH_ROWS and np.all(np.diff(whole.keys.astype(np.float64)) >= 0)
    # a repeated text is a new row, keyed apart from its first copy; without ids, the same
    firsts, seconds = text_keys(texts[:300], ids[:300]), text_keys(texts[1200:], ids[1200:])
    assert not set(firsts.tolist()) & set(seconds.tolist())
    assert np.array_equal(text_keys(texts[:300]), text_keys(texts[1200:]))
    again = Reservoir.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert np.array_equal(again.keys, whole.keys) and np.array_equal(again.vectors, whole.vectors)


def test_windows_keep_a_sample_that_merges_and_round_trips(
    baseline: Baseline, minilm: Embedder, corpus: dict[str, list[str]]
) -> None:
    texts = corpus["reviews"][2000:2800]
    records = [
        {"inference_id": f"r{i // 4}", "row": i % 4, "ts": 1.0, "input": {"text": t}}
        for i, t in enumerate(texts)
    ]
    records[5]["input"] = {"text": None}
    whole = WindowStats.from_records(baseline, records, embedder=minilm)
    halves = [
        WindowStats.from_records(baseline, part, embedder=minilm)
        for part in (records[:333], records[333:])
    ]
    merged = WindowStats.from_json(halves[0].merge(halves[1]).to_json())

    sample, expected = merged.features["text"].sample, whole.features["text"].sample
    assert sample is not None and expected is not None and len(sample) == SKETCH_ROWS
    assert np.array_equal(sample.keys, expected.keys)
    np.testing.assert_allclose(sample.vectors, expected.vectors, atol=1e-6)
    assert merged.features["text"].present == 799 and merged.features["text"].missing == 1
    assert WindowStats.from_records(baseline, records).features["text"].sample is None


def test_compare_flags_debates_and_passes_other_reviews(
    baseline: Baseline, minilm: Embedder, corpus: dict[str, list[str]]
) -> None:
    def judged(texts: list[str]) -> dict:
        window = WindowStats.from_batch(baseline, {"text": texts}, embedder=minilm)
        report = compare(baseline, window, Thresholds(min_samples=200))
        assert report.thresholds.text_auc == 0.75
        return report.to_dict()["features"][0]

    debates = judged(corpus["debates"][:300])
    assert debates["status"] == "drifted"
    assert debates["metrics"]["embedding_auc"] > 0.9
    assert debates["metrics"]["embedding_samples"] == 300
    assert any(r.startswith("embedding auc") for r in debates["reasons"])

    reviews = judged(corpus["reviews"][3000:3300])
    assert reviews["metrics"]["embedding_auc"] < 0.6
    assert not any(r.startswith("embedding auc") for r in reviews["reasons"])

    few = judged(corpus["debates"][:100])  # computed, but too few texts to judge
    assert few["metrics"]["embedding_auc"] > 0.9 and few["status"] == str(Status.INSUFFICIENT_DATA)


def test_domain_auc_is_half_for_one_distribution_and_high_for_another(
    minilm: Embedder, corpus: dict[str, list[str]]
) -> None:
    reference = minilm.embed(corpus["reviews"][:500])
    same = minilm.embed(corpus["reviews"][5000:5600])
    other = minilm.embed(corpus["debates"][:600])

    assert abs(domain_auc(reference, same) - 0.5) < 0.07
    assert domain_auc(reference, other) > 0.9
    assert domain_auc(reference, other) == domain_auc(reference, other)  # seeded
    took = min(timeit.repeat(lambda: domain_auc(reference, other), number=1, repeat=3))
    assert took < 0.5  # measured ~10 ms on 2 idle cores
    with pytest.raises(ValueError, match="5 rows on each side"):
        domain_auc(reference, other[:4])


@pytest.mark.parametrize(("shift", "expected"), [(0.0, 0.5), (1.0, 0.760), (2.0, 0.921)])
def test_domain_auc_finds_the_auc_a_known_shift_allows(shift: float, expected: float) -> None:
    """Two Gaussians in 64 dimensions, one moved by ``shift`` along one axis: the best
    classifier's AUC is Φ(shift / √2); one learned from 800 rows comes close below it (its 64
    weights cost a few hundredths), never far above (that would be leakage between folds)."""
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(600, DIMS))
    current = rng.normal(size=(500, DIMS))
    current[:, 3] += shift

    auc = domain_auc(reference, current)

    assert expected - 0.06 <= auc <= expected + 0.03, auc


def test_a_model_that_is_not_a_text_model_has_no_embedder(tmp_path: Path) -> None:
    houses = tmp_path / "houses"
    toy.train_houses(houses)  # a scikit-learn pipeline
    assert Embedder.load(houses) is None
    frame = pd.DataFrame(toy.reviews(100, seed=1))
    assert (
        Baseline.from_frame(frame, [Feature("review", "string")], text={"review"})
        .features["review"]
        .sketch
        is None
    )  # type: ignore[union-attr]


def test_the_embedding_matrix_is_found_by_name_by_size_or_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    vocabulary = 30522
    words = rng.normal(size=(vocabulary, 16)).astype(np.float32)

    def folder(name: str, tensors: dict[str, np.ndarray]) -> Path:
        made = tmp_path / name
        made.mkdir()
        (made / "config.json").write_text("{}")
        shutil.copy(minilm_folder() / "tokenizer.json", made / "tokenizer.json")
        save_file(tensors, str(made / "model.safetensors"))
        return made

    decoy = rng.normal(size=(vocabulary, 16)).astype(np.float32)
    named = folder(
        "named", {"a.decoder.weight": decoy, "bert.embeddings.word_embeddings.weight": words}
    )
    sized = folder("sized", {"transformer.wte.weight": words, "h.0.bias": words[0]})
    refused = folder("refused", {"h.0.weight": words[:100], "h.0.bias": words[0]})

    for found in (named, sized):
        embedder = Embedder.load(found)
        assert embedder is not None and np.array_equal(embedder.matrix, words)
    with pytest.raises(ModelLoadError, match="no token-embedding matrix"):
        Embedder.load(refused)
    broken = folder("broken", {"embed_tokens.weight": words})
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read"):
        Embedder.load(broken)


def test_bfloat16_embeddings_are_widened(tmp_path: Path) -> None:
    words = np.random.default_rng(1).normal(size=(30522, 8)).astype(np.float32)
    truncated = (words.view(np.uint32) & 0xFFFF0000).view(np.float32)  # bf16-exact values
    raw = (truncated.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = {
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": [30522, 8]}
        | {"data_offsets": [0, len(raw)]}
    }
    encoded = json.dumps(header).encode()
    (tmp_path / "config.json").write_text("{}")
    shutil.copy(minilm_folder() / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model.safetensors").write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw)

    embedder = Embedder.load(tmp_path)

    assert embedder is not None and embedder.matrix.dtype == np.float32
    assert np.array_equal(embedder.matrix, truncated)
