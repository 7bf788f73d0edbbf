"""The retrain policy: on a drift or quality alarm, decide whether to retrain, and start it.

``consider(ws, alarms)`` runs after each monitoring pass (``tidal monitor``, and every
``monitoring.interval_s`` under ``tidal up``). With no standing alarm it decides nothing. With
one, it goes through the checks below in order; the first that fails is the decision, a skip
with its reason; when all pass it retrains:

    disabled        retrain.enabled is false
    not_triggered   none of the alarms is of a kind in retrain.triggers
    in_flight       a retrain started by the policy is still queued or running
    cooldown        the last retrain started less than retrain.cooldown_s ago
    runs_budget     retrain.max_runs_per_day retrains started in the last 24 hours
    compute_budget  those retrains trained for retrain.max_compute_s_per_day seconds or more
    too_few_rows    fewer than retrain.min_rows labelled rows arrived since the last retrain
    quarantined     the check of the labels (``tidal.monitoring.trust``) quarantined a sender's
                    labels, and fewer than retrain.min_rows new trusted rows remain
    unchecked       that check could not run (the champion or the holdout unreadable)
    retrain         all passed: a training file lands, and the run is queued

The budgets count the policy's own retrains: a file a user lands is their explicit choice.

Labels from ``/feedback`` are untrusted until checked: before a retrain file lands, each
sender's labels are tested against the champion (``tidal.monitoring.trust``: contradictions on
confidently predicted rows against its holdout error), and a sender who fails is quarantined
(its labels never trained on; the figures in the decision's ``checks`` and a
``labels.quarantined`` event). One sender's rows are then capped so that its share of the
accumulated training set stays within ``validation.max_file_share`` (the newest are kept;
``capped`` says how many went).

*Labelled rows* are late labels (``POST /feedback``, files in ``feedback/``) joined to the
served inputs they label (the capture records): the features the model saw and the label it
should have given. The retrain file holds every labelled row received since the last retrain
that was promoted (rows of a rejected retrain are not lost: they go into the next one), as JSON
Lines at ``incoming/retrain-<UTC time>.jsonl``. It goes through the same loop as any landed file:
validation, training on it plus every accepted training set before it (``data.accumulate``),
the gate against the champion on the frozen holdout and this file's test split, registration,
and the configured rollout.

Every decision is a row of the ``retrain_decisions`` table, shown by ``tidal monitor`` and
``tidal status``. A skip for the same reason and alarms as the latest decision updates that row
(``repeats``, ``last_at``) rather than adding one per pass.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidal.storage import sha256_bytes
from tidal.workspace import INCOMING

if TYPE_CHECKING:
    from tidal.workspace import Workspace

log = logging.getLogger("tidal.monitoring.policy")

DAY_S = 86_400.0
FILE_PREFIX = "retrain-"
EVENT = "retrain"


@dataclass
class Alarm:
    """A standing alarm: ``kind`` drift or quality, on ``version``, with what fired."""

    kind: str
    version: str
    detail: str

    @property
    def key(self) -> str:
        return f"{self.kind}:v{self.version}:{self.detail}"


@dataclass
class RetrainDecision:
    action: str  # retrain or skip
    reason: str  # a code of the module docstring's table
    message: str  # the same, for people
    alarms: list[dict[str, str]]
    new_rows: int = 0  # labelled rows received since the last retrain
    rows: int = 0  # labelled rows in the retrain file
    run_id: int | None = None
    source: str | None = None  # the retrain file's URI
    cutoff: float | None = None  # received_at of the newest label in the file
    champion: str | None = None
    checks: dict[str, Any] | None = None  # the label check (tidal.monitoring.trust.Screen)
    capped: dict[str, int] | None = None  # sender → rows left out by validation.max_file_share
    at: float = field(default_factory=time.time)
    id: int | None = None
    repeats: int = 1
    last_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelledRows:
    """Late labels joined to the inputs they label, ready to become a training file."""

    rows: list[dict[str, Any]]  # features and the label column, in the schema's order
    received_at: list[float]
    unusable: int = 0  # labels whose input lacks a feature, or whose label is not a class
    senders: list[str] = field(default_factory=list)  # who sent each row's label (key id)
    ids: list[tuple[str, int]] = field(default_factory=list)  # each (inference_id, row)

    def since(self, cutoff: float | None) -> int:
        return len(self.rows) if cutoff is None else sum(t > cutoff for t in self.received_at)


def standing_alarms(ws: Workspace, summary: dict[str, Any], now: float) -> list[Alarm]:
    """The alarms on the serving version after a monitoring pass: its latest drift report, when
    drifted and from the current or the previous window, and the pass's quality alarms."""
    from tidal.monitoring.job import MonitorJob

    deployment = ws.state.current_deployment(ws.model_name)
    if deployment is None:
        return []
    version = str(deployment.version)
    alarms: list[Alarm] = []
    window_s = ws.config.monitoring.window_s
    report = MonitorJob(ws, window_s=window_s).latest_report(version)
    if report is not None and report.get("status") == "drifted":
        # a count window's newest row; a time window's start (the newest row is within it)
        newest = report.get("window_end") or report.get("window_start") or 0.0
        recent = float(newest) + 2 * window_s >= now
        if recent:
            drifted = report.get("drifted") or ["predictions"]
            alarms.append(Alarm("drift", version, ",".join(sorted(drifted))))
    for alarm in summary.get("quality", {}).get("alarms", []):
        if str(alarm.get("version")) == version:
            alarms.append(Alarm("quality", version, str(alarm.get("metric"))))
    return alarms


def consider(
    ws: Workspace, summary: dict[str, Any], *, now: float | None = None
) -> RetrainDecision | None:
    """Decide on the standing alarms after a pass (``summary``: ``tidal monitor``'s); None when
    nothing is alarming. A retrain decision has already queued its run."""
    now = time.time() if now is None else now
    alarms = standing_alarms(ws, summary, now)
    if not alarms:
        return None
    decision = _decide(ws, alarms, now)
    return _record(ws, decision)


def _decide(ws: Workspace, alarms: list[Alarm], now: float) -> RetrainDecision:
    cfg = ws.config.retrain
    deployment = ws.state.current_deployment(ws.model_name)
    found = [{"kind": a.kind, "version": a.version, "detail": a.detail} for a in alarms]

    def skip(reason: str, message: str, **extra: Any) -> RetrainDecision:
        champion = deployment.version if deployment else None
        return RetrainDecision("skip", reason, message, found, champion=champion, at=now, **extra)

    if not cfg.enabled:
        return skip("disabled", "retrain.enabled is false: alarms are reported, never acted on")
    if not any(a.kind in cfg.triggers for a in alarms):
        kinds = ", ".join(sorted({a.kind for a in alarms}))
        return skip(
            "not_triggered",
            f"{kinds} alarms do not start retrains (retrain.triggers: "
            f"{', '.join(cfg.triggers) or 'none'})",
        )
    retrains = [d for d in decisions(ws, limit=1000) if d.action == "retrain"]
    for d in retrains:
        run = ws.state.run(d.run_id) if d.run_id else None
        if run is not None and run.status.value in ("queued", "running"):
            return skip("in_flight", f"retrain run {run.id} is still {run.status.value}")
    if retrains and now - retrains[0].at < cfg.cooldown_s:
        left = cfg.cooldown_s - (now - retrains[0].at)
        return skip(
            "cooldown",
            f"the last retrain started {_ago(now - retrains[0].at)} ago; the cooldown "
            f"(retrain.cooldown_s {cfg.cooldown_s:g}) ends in {_ago(left)}",
        )
    today = [d for d in retrains if now - d.at < DAY_S]
    if len(today) >= cfg.max_runs_per_day:
        return skip(
            "runs_budget",
            f"{len(today)} retrains in the last 24 hours reach retrain.max_runs_per_day "
            f"({cfg.max_runs_per_day})",
        )
    spent = sum(_compute_seconds(ws, d.run_id) for d in today)
    if today and spent >= cfg.max_compute_s_per_day:
        return skip(
            "compute_budget",
            f"retrains used {spent:.0f} s of training in the last 24 hours, the budget "
            f"retrain.max_compute_s_per_day is {cfg.max_compute_s_per_day:g} s",
        )
    since = retrains[0].cutoff if retrains else None
    counted = _labelled_since(ws, since)  # an upper bound, from the table alone
    if counted < cfg.min_rows:
        return skip(
            "too_few_rows",
            f"{counted} new labelled rows since the last retrain, retrain.min_rows is "
            f"{cfg.min_rows}",
            new_rows=counted,
        )
    labelled = labelled_rows(ws, sync=False)
    new = labelled.since(since)
    if new < cfg.min_rows:
        return skip(
            "too_few_rows",
            f"{new} new labelled rows since the last retrain, retrain.min_rows is "
            f"{cfg.min_rows}"
            + (f" ({labelled.unusable} labels unusable)" if labelled.unusable else ""),
            new_rows=new,
        )
    promoted = [d for d in retrains if _promoted(ws, d.run_id)]
    cutoff = promoted[0].cutoff if promoted else None
    picked = [i for i, t in enumerate(labelled.received_at) if cutoff is None or t > cutoff]
    try:
        checked = _check_labels(ws, labelled, picked)
    except Exception as exc:  # no check, no training on untrusted labels
        log.exception("the late labels could not be checked")
        return skip(
            "unchecked",
            f"the late labels could not be checked against the champion ({exc}); nothing is "
            "trained on them until they are",
            new_rows=new,
        )
    doubted = set(checked.quarantined)
    picked = [i for i in picked if labelled.senders[i] not in doubted]
    new = sum(since is None or labelled.received_at[i] > since for i in picked)
    if doubted and new < cfg.min_rows:
        return skip(
            "quarantined",
            f"the labels of {', '.join(sorted(doubted))} were quarantined: they contradict "
            f"champion v{checked.champion} far more often than its holdout error allows; "
            f"{new} new trusted labelled rows remain, retrain.min_rows is {cfg.min_rows}",
            new_rows=new,
            checks=checked.to_dict(),
        )
    picked, capped = _cap_senders(ws, labelled, picked)
    rows = [labelled.rows[i] for i in picked]
    source, run_id = _land(ws, rows, now)
    names = ", ".join(f"{a.kind} on v{a.version}" for a in alarms)
    return RetrainDecision(
        "retrain",
        "retrain",
        f"{names}: retraining on {len(rows)} labelled rows ({new} new) with every accepted "
        "training set before them"
        + (f"; quarantined: {', '.join(sorted(doubted))}" if doubted else "")
        + (f"; capped by validation.max_file_share: {capped}" if capped else ""),
        found,
        new_rows=new,
        rows=len(rows),
        run_id=run_id,
        source=source,
        cutoff=max(labelled.received_at),
        champion=deployment.version if deployment else None,
        checks=checked.to_dict(),
        capped=capped or None,
        at=now,
    )


def _check_labels(ws: Workspace, labelled: LabelledRows, picked: list[int]) -> Any:
    """The trust check of the ``picked`` rows; the labels of a quarantined sender are marked
    (never trained on again), each with a ``labels.quarantined`` event."""
    from tidal.monitoring import labels, trust

    checked = trust.check(
        ws, [labelled.rows[i] for i in picked], [labelled.senders[i] for i in picked]
    )
    for sender in checked.senders:
        if not sender.quarantined:
            continue
        marked = labels.quarantine(
            ws, [labelled.ids[i] for i in picked if labelled.senders[i] == sender.key]
        )
        ws.state.event(
            "labels.quarantined",
            f"{marked} late labels quarantined, never trained on: {sender.reason}",
            model=ws.model_name,
            data=asdict(sender) | {"marked": marked},
        )
        log.warning("labels quarantined: %s", sender.reason)
    return checked


def _cap_senders(
    ws: Workspace, labelled: LabelledRows, picked: list[int]
) -> tuple[list[int], dict[str, int]]:
    """``picked`` with each sender's rows cut to the newest that keep its share of the
    accumulated training set (the accepted train splits plus its rows) within
    ``validation.max_file_share``; and how many rows each cut sender lost."""
    share = ws.config.validation.max_file_share
    if share >= 1.0 or not ws.config.data.accumulate:
        return picked, {}
    from tidal.pipeline import accepted_train_rows

    accumulated = accepted_train_rows(ws)
    if accumulated == 0:  # a champion deployed by hand: no training set to hold a share of
        return picked, {}
    limit = int(share / (1.0 - share) * accumulated)
    counts: dict[str, int] = {}
    for i in picked:
        counts[labelled.senders[i]] = counts.get(labelled.senders[i], 0) + 1
    capped = {key: n - limit for key, n in counts.items() if n > limit}
    skip = dict(capped)
    kept = []
    for i in picked:  # oldest first: a capped sender's oldest rows go
        key = labelled.senders[i]
        if skip.get(key, 0) > 0:
            skip[key] -= 1
            continue
        kept.append(i)
    return kept, capped


def _labelled_since(ws: Workspace, cutoff: float | None) -> int:
    """Labels joined to their prediction since ``cutoff`` whose label is a class of the schema
    (after taking in new labels); their inputs are not read, so some may still be unusable."""
    from tidal.monitoring.feedback import label_text
    from tidal.monitoring.labels import matched_since, sync
    from tidal.pipeline import load_schema

    sync(ws)
    schema = load_schema(ws)
    if schema is None:
        return 0
    classes = {text for c in schema.labels if (text := label_text(c)) is not None}
    return matched_since(ws, cutoff, sorted(classes))


def labelled_rows(ws: Workspace, *, sync: bool = True) -> LabelledRows:
    """Every late label joined to the captured input it labels (latest label per row wins);
    ``sync``: take in new labels first."""
    from tidal.monitoring import labels
    from tidal.monitoring.feedback import label_text
    from tidal.pipeline import load_schema

    if sync:
        labels.sync(ws)
    schema = load_schema(ws)
    if schema is None:
        return LabelledRows([], [])
    names = schema.feature_names
    classes = {label_text(c): c for c in schema.labels}
    found = LabelledRows([], [])
    for x in labels.labelled(ws):
        value = classes.get(label_text(x.label))
        if value is None or any(name not in x.input for name in names):
            found.unusable += 1
            continue
        found.rows.append({name: x.input[name] for name in names} | {schema.label_column: value})
        found.received_at.append(x.received_at)
        found.senders.append(x.key_id)
        found.ids.append((x.inference_id, x.row))
    return found


def decisions(ws: Workspace, *, limit: int = 20) -> list[RetrainDecision]:
    """The model's retrain decisions, newest first."""
    return [_from_doc(doc) for doc in ws.state.retrain_decisions(ws.model_name, limit=limit)]


# -- steps ------------------------------------------------------------------------------------


def _land(ws: Workspace, rows: list[dict[str, Any]], now: float) -> tuple[str, int]:
    """Write the retrain file into incoming/ and queue its run; returns (uri, run id)."""
    from tidal.controller import Controller

    data = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
    key = f"{INCOMING}/{FILE_PREFIX}{stamp}-{sha256_bytes(data)[:8]}.jsonl"
    ws.store.put_bytes(key, data)
    run, _ = Controller(ws).submit(ws.store.uri(key), sha256_bytes(data), landed_at=now)
    return ws.store.uri(key), run.id


def _record(ws: Workspace, decision: RetrainDecision) -> RetrainDecision:
    """Store ``decision`` (or fold a repeated skip into the latest row) and tell people."""
    previous = decisions(ws, limit=1)
    last = previous[0] if previous else None
    same = (
        last is not None
        and decision.action == "skip"
        and last.action == "skip"
        and last.reason == decision.reason
        and last.alarms == decision.alarms
    )
    if same and last is not None and last.id is not None:
        last.repeats += 1
        last.last_at = decision.at
        last.message, last.new_rows = decision.message, decision.new_rows
        ws.state.update_retrain_decision(last.id, _doc(last))
        return last
    decision.id = ws.state.add_retrain_decision(ws.model_name, decision.action, _doc(decision))
    ws.state.event(
        EVENT,
        f"{decision.action} ({decision.reason}): {decision.message}",
        model=ws.model_name,
        run_id=decision.run_id,
        data={"decision_id": decision.id, "reason": decision.reason},
    )
    log.info("retrain decision %s: %s (%s)", decision.id, decision.action, decision.message)
    return decision


def _compute_seconds(ws: Workspace, run_id: int | None) -> float:
    if run_id is None:
        return 0.0
    trained = ws.state.step_outputs(run_id).get("train") or {}
    return float(trained.get("train_seconds") or 0.0)


def _promoted(ws: Workspace, run_id: int | None) -> bool:
    run = ws.state.run(run_id) if run_id else None
    return run is not None and run.decision == "promoted"


def _doc(decision: RetrainDecision) -> dict[str, Any]:
    return {k: v for k, v in decision.to_dict().items() if k != "id"}


def _from_doc(doc: dict[str, Any]) -> RetrainDecision:
    fields = RetrainDecision.__dataclass_fields__
    return RetrainDecision(**{k: v for k, v in doc.items() if k in fields})


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
