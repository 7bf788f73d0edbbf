"""A job's staged inputs live only as long as the job: when it ends, ``input/data/`` is removed
and ``input/manifest.json`` names what it read, so N runs that each train on every accumulated
set leave N small job folders, not N copies of a growing pile (disk grew with N² before).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tidal.storage import Store
from tidal.training.executors.base import JobSpec, JobStatus
from tidal.training.executors.local import LocalExecutor

# the job proves it could read its inputs while it ran: their names and sizes, in its model
READER = """
import json, os
from pathlib import Path
seen = {p.name: p.stat().st_size for p in Path(os.environ["SM_CHANNEL_TRAIN"]).iterdir()}
Path(os.environ["SM_MODEL_DIR"], "seen.json").write_text(json.dumps(seen))
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_job_folders_keep_a_manifest_of_their_inputs_not_a_copy(tmp_path: Path) -> None:
    store = Store((tmp_path / "store").as_uri())
    executor = LocalExecutor(store, tmp_path / "jobs")
    sets: list[str] = []
    grown = []
    for run in range(1, 6):  # each run trains on every set so far, as accumulate does
        data = (json.dumps({"x": run, "pad": "y" * 200}) + "\n").encode() * 500
        store.put_bytes(f"_tidal/datasets/ds-{run}/train.jsonl", data)
        sets.append(store.uri(f"_tidal/datasets/ds-{run}/train.jsonl"))
        spec = JobSpec(
            name=f"run-{run}",
            command=[sys.executable, "-c", READER],
            channels={"train": list(sets)},
            hyperparameters={},
            output_uri=store.uri(f"_tidal/runs/{run}/model"),
            timeout_s=60,
        )
        result = executor.collect(executor.submit(spec))
        assert result.status == JobStatus.SUCCEEDED, result.log_tail
        seen = json.loads(store.get_bytes(f"_tidal/runs/{run}/model/seen.json"))
        assert sorted(seen.values()) == [len(data)] * run  # the job read every set, whole
        root = tmp_path / "jobs" / f"run-{run}"
        assert not (root / "input" / "data").exists()
        manifest = json.loads((root / "input" / "manifest.json").read_text())
        assert [item["uri"] for item in manifest["train"]] == sets
        for item in manifest["train"]:
            stored = store.get_bytes(store.key_of(item["uri"]))
            assert item["sha256"] == hashlib.sha256(stored).hexdigest()
            assert item["bytes"] == len(stored)
        grown.append(folder_bytes(tmp_path / "jobs"))
    steps = [b - a for a, b in zip([0, *grown], grown, strict=False)]
    # linear: each run adds about the same (a manifest line more), never its inputs again
    assert max(steps) - min(steps) < 2_000, steps
    assert grown[-1] < 5 * 10_000, grown
