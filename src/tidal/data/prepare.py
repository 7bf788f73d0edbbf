"""Preparing accepted data for training: splits, dataset versions and the JSON Lines format.

Pure functions, no I/O: the runner reads and writes the bytes. Accepted data is stored as JSON
Lines (``to_jsonl``) rather than CSV because JSON keeps a value's type: "007" stays a string,
1 an integer, true a boolean.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from tidal.errors import DataRejected, TidalError, UsageError

VERSION_PREFIX = "ds-"
VERSION_HEX = 12


def split(
    frame: pd.DataFrame, fraction: float, *, label_column: str, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into ``(rest, cut)``, ``cut`` holding ``round(len * fraction)`` rows.

    The cut is stratified by ``label_column`` (each class keeps its share, to the row) when every
    class has at least two rows, else drawn at random. A frame of two rows or more gives both
    parts at least one row. The same frame and seed always give the same split; both parts keep
    the frame's row order and get a fresh index.
    """
    if not 0 < fraction < 1:
        raise UsageError(f"split fraction must be between 0 and 1, got {fraction}")
    if label_column not in frame.columns:
        raise TidalError(
            f"cannot stratify on {label_column!r}: not a column "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    rows = len(frame)
    size = min(max(round(rows * fraction), 1), rows - 1) if rows >= 2 else 0
    rng = np.random.default_rng(seed)
    codes, _ = pd.factorize(frame[label_column], use_na_sentinel=False)
    counts = np.bincount(codes) if rows else np.zeros(0, dtype=int)
    if size and counts.min() >= 2:
        chosen = _stratified(codes, counts, size, rng)
    else:
        chosen = rng.permutation(rows)[:size]
    mask = np.zeros(rows, dtype=bool)
    mask[chosen] = True
    rest = frame.iloc[np.flatnonzero(~mask)].reset_index(drop=True)
    cut = frame.iloc[np.flatnonzero(mask)].reset_index(drop=True)
    return rest, cut


def _stratified(
    codes: np.ndarray, counts: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions of ``size`` rows, each class's share by largest remainder, drawn at random."""
    quota = counts * size / counts.sum()
    take = np.floor(quota).astype(int)
    # leave every class a row in the rest when the sizes allow it
    room = counts - 1 if (counts - 1).sum() >= size else counts
    take = np.minimum(take, room)
    order = np.argsort(-(quota - take), kind="stable")
    while take.sum() < size:
        for c in order:
            if take.sum() < size and take[c] < room[c]:
                take[c] += 1
    picked = [rng.permutation(np.flatnonzero(codes == c))[:n] for c, n in enumerate(take) if n]
    return np.concatenate(picked) if picked else np.zeros(0, dtype=int)


def drop_known(
    frame: pd.DataFrame, known: pd.DataFrame, columns: list[str]
) -> tuple[pd.DataFrame, int]:
    """``frame`` without the rows whose ``columns`` equal those of a row of ``known`` (rows of
    the frozen holdout sent again: training on them would leak it); and how many went."""
    if frame.empty or known.empty or any(c not in known.columns for c in columns):
        return frame, 0
    seen = set(pd.util.hash_pandas_object(_comparable(known[columns]), index=False).tolist())
    mine = pd.util.hash_pandas_object(_comparable(frame[columns]), index=False)
    leaked = mine.isin(seen).to_numpy()
    count = int(leaked.sum())
    return (frame.loc[~leaked].reset_index(drop=True) if count else frame), count


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as float64, so that 5 in one frame and 5.0 in another hash alike."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c].dtype)]
    return frame.astype(dict.fromkeys(numeric, "float64")) if numeric else frame


def cap_share(
    frame: pd.DataFrame, accumulated: int, share: float, *, label_column: str, seed: int
) -> tuple[pd.DataFrame, int]:
    """``frame`` sampled down (stratified, seeded) so that it is at most ``share`` of the
    training set it joins (``accumulated`` rows before it); and how many rows went. Nothing
    accumulated yet (the first file), or a share of 1: the frame as it is."""
    if accumulated <= 0 or share >= 1.0:
        return frame, 0
    limit = int(share / (1.0 - share) * accumulated)
    if len(frame) <= limit or limit < 1:
        return frame, 0
    _, kept = split(frame, limit / len(frame), label_column=label_column, seed=seed)
    return kept, len(frame) - len(kept)


def dataset_version(sha256: str) -> str:
    """The version name of a dataset from the sha256 of its bytes: ``ds-`` and 12 hex digits."""
    if not re.fullmatch(r"[0-9a-f]{12,64}", sha256):
        raise UsageError(
            f"not a sha256 hex digest: {sha256!r}",
            hint="pass the lowercase hex digest, e.g. tidal.storage.sha256_bytes(data)",
        )
    return VERSION_PREFIX + sha256[:VERSION_HEX]


def to_jsonl(frame: pd.DataFrame) -> bytes:
    """``frame`` as UTF-8 JSON Lines, one object per row; missing values are written as null."""
    names = [str(c) for c in frame.columns]
    columns = [_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
    lines = []
    for row in zip(*columns, strict=True) if columns else ():
        record = dict(zip(names, row, strict=True))
        try:
            lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False, default=str))
        except ValueError as exc:
            raise DataRejected(
                f"cannot write row {len(lines) + 1} as JSON: {exc}",
                hint="infinite numbers are not allowed; replace them or leave the cells empty",
            ) from exc
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def _column(series: pd.Series) -> list[Any]:
    missing = series.isna().tolist()
    values = series.tolist()
    return [None if gone else _native(v) for v, gone in zip(values, missing, strict=True)]


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def from_jsonl(data: bytes) -> pd.DataFrame:
    """The frame ``to_jsonl`` wrote: int, float, str and bool columns come back as they were."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TidalError(f"dataset is not UTF-8: bad byte at offset {exc.start}") from exc
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TidalError(f"dataset line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise TidalError(f"dataset line {number} is not a JSON object")
        records.append(record)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()
