"""Rollouts: a new version reaches traffic step by step, watched by alarms, rolled back at once.

A rollout is a record in the controller database (``State.create_rollout``): the candidate, the
plan (steps of traffic share and bake time, from the strategy), the alarms, and where it is.
The endpoint applies the record (``tidal.serving.variants.RolloutRouter``) and writes each
variant's counters beside it; ``Manager.tick()`` reads both and moves the rollout on. Because
everything lives in the database, a controller killed mid-bake resumes where it was.

Strategies, named after SageMaker's deployment guardrails (BlueGreenUpdatePolicy):

    all_at_once   100% at once, then one bake
    canary        canary_percent for a bake, then 100% for a bake
    linear        linear_step_percent more at each step, each baked, up to 100%
    blue_green    100% once the candidate is warm, then a bake; the old version stays ready
                  for the termination wait
    shadow        shadow_percent of requests mirrored to the candidate (never answered) for a
                  bake, compared with the primary's answers; then promoted
    ab            ab_percent for ab_duration_s (sticky by header if set), then an A/B readout;
                  promoted only by hand ('tidal rollout promote')

Every strategy first starts the candidate's worker with no traffic (``warming``), so no request
and no alarm ever pays for its cold start. During every bake the alarms
(``tidal.rollout.alarms``) are judged on the last ``window_s`` seconds and, when the bake ends,
on the whole bake. Any firing alarm sends all traffic back to
the primary at once: the rollout is ``rolled_back`` with the reason and the evidence, an event
is recorded and an alert sent. A bake whose candidate saw fewer than ``min_samples`` requests
never passes: it is extended (``no_data: extend``, up to ``max_extensions``) or ends
``inconclusive``. A passed final step promotes: the ``champion`` alias moves and the endpoint
serves the candidate as its primary (warm before the switch).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tidal.errors import UsageError
from tidal.rollout import alarms
from tidal.serving.variants import CANDIDATE, PRIMARY

if TYPE_CHECKING:
    from tidal.config import RolloutConfig
    from tidal.workspace import Workspace

log = logging.getLogger("tidal.rollout")

STRATEGIES = ("all_at_once", "canary", "linear", "blue_green", "shadow", "ab")
ACTIVE = ("warming", "baking", "paused")
WARM_TIMEOUT_S = 180.0


def plan(strategy: str, config: RolloutConfig) -> list[dict[str, float]]:
    """The steps of a strategy: the candidate's traffic and shadow share, and the bake."""
    bake = config.bake_s
    if strategy == "canary":
        return [
            {"traffic": config.canary_percent, "shadow": 0.0, "bake_s": bake},
            {"traffic": 100.0, "shadow": 0.0, "bake_s": bake},
        ]
    if strategy == "linear":
        count = math.ceil(100 / config.linear_step_percent)
        shares = [min(100.0, config.linear_step_percent * (i + 1)) for i in range(count)]
        return [{"traffic": share, "shadow": 0.0, "bake_s": bake} for share in shares]
    if strategy == "shadow":
        return [{"traffic": 0.0, "shadow": config.shadow_percent, "bake_s": bake}]
    if strategy == "ab":
        return [{"traffic": config.ab_percent, "shadow": 0.0, "bake_s": config.ab_duration_s}]
    if strategy in ("all_at_once", "blue_green"):
        return [{"traffic": 100.0, "shadow": 0.0, "bake_s": bake}]
    raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def alarm_config(config: RolloutConfig) -> alarms.AlarmConfig:
    return alarms.AlarmConfig(
        max_error_rate=config.max_error_rate,
        max_p99_ratio=config.max_p99_ratio,
        max_prediction_shift=config.max_prediction_shift,
        min_samples=config.min_samples,
        min_latency_margin_s=config.min_latency_margin_ms / 1000,
        latency_quantile=config.latency_quantile,
        latency_confidence=config.latency_confidence,
    )


class Manager:
    """Starts rollouts and moves the active one on; ``tick()`` is safe to call at any time."""

    def __init__(self, ws: Workspace, *, clock: Any = time.time) -> None:
        self.ws = ws
        self.state = ws.state
        self.model = ws.model_name
        self.clock = clock

    # -- starting -------------------------------------------------------------------------------

    def start(
        self,
        version: str,
        *,
        strategy: str | None = None,
        config: RolloutConfig | None = None,
        run_id: int | None = None,
    ) -> dict[str, Any]:
        """Start rolling ``version`` out; refused when one is running or no alarm is on."""
        from tidal.deploy import prepare

        config = config or self.ws.config.rollout
        strategy = strategy or config.strategy
        steps = plan(strategy, config)
        alarm = alarm_config(config)
        if not alarm.any_enabled and not config.allow_no_alarms:
            raise UsageError(
                "a rollout with every alarm off would promote whatever happens, so it is refused",
                hint="set rollout.max_error_rate (or another alarm) in tidal.yaml, or say "
                "that no alarm is wanted with rollout.allow_no_alarms: true (--no-alarms)",
            )
        current = self.state.current_deployment(self.model)
        if current is None:
            raise UsageError(
                f"nothing serves {self.model} yet, so there is nothing to roll out against",
                hint="the first version is deployed directly: 'tidal run FILE' promotes it",
            )
        if current.version == version:
            raise UsageError(f"v{version} is already the champion; nothing to roll out")
        target, manifest_sha = prepare(self.ws, version)
        now = self.clock()
        first = "warming"  # every candidate is started before it gets traffic: no cold start
        doc: dict[str, Any] = {
            "strategy": strategy,
            "baseline_version": current.version,
            "candidate_version": version,
            "candidate_dir": str(target),
            "candidate_sha256": manifest_sha,
            "steps": steps,
            "step": 0,
            "traffic": 0.0,
            "shadow": 0.0,
            "sticky_header": config.sticky_header,
            "alarms": asdict(alarm),
            "window_s": config.window_s,
            "no_data": config.no_data,
            "max_extensions": config.max_extensions,
            "extensions": 0,
            "on_lost_evidence": config.on_lost_evidence,
            "termination_wait_s": config.termination_wait_s,
            "started_at": now,
            "step_started_at": now,
            "deadline": now + config.max_execution_s,
            "run_id": run_id,
            "reason": None,
            "evidence": None,
            "history": [{"t": now, "event": "started", "status": first}],
        }
        doc["id"] = self.state.create_rollout(self.model, first, doc)
        shares = " → ".join(f"{step['traffic']:g}%" for step in steps)
        self.state.event(
            "rollout_started",
            f"rollout {doc['id']}: v{version} by {strategy} ({shares})",
            model=self.model,
            run_id=run_id,
            data={"rollout_id": doc["id"], "version": version, "strategy": strategy},
        )
        return self.state.rollout(doc["id"]) or doc

    # -- control --------------------------------------------------------------------------------

    def active(self) -> dict[str, Any] | None:
        found = self.state.rollouts(self.model, active=True)
        return found[0] if found else None

    def latest(self) -> dict[str, Any] | None:
        found = self.state.rollouts(self.model, limit=1)
        return found[0] if found else None

    def pause(self) -> dict[str, Any]:
        rollout = self._require_active()
        if rollout["status"] == "paused":
            return rollout
        rollout["paused_status"] = rollout["status"]
        rollout["paused_at"] = self.clock()
        return self._save(rollout, "paused", "paused by hand")

    def resume(self) -> dict[str, Any]:
        rollout = self._require_active()
        if rollout["status"] != "paused":
            raise UsageError(f"rollout {rollout['id']} is {rollout['status']}, not paused")
        now = self.clock()
        paused_for = now - float(rollout.pop("paused_at", now))
        rollout["deadline"] = float(rollout["deadline"]) + paused_for
        rollout["step_started_at"] = now  # the bake starts again: evidence from before is stale
        return self._save(rollout, rollout.pop("paused_status", "baking"), "resumed by hand")

    def abort(self, reason: str = "aborted by hand") -> dict[str, Any]:
        rollout = self._require_active()
        return self._end(rollout, "aborted", reason, evidence=None)

    def promote(self) -> dict[str, Any]:
        """Promote the candidate now (an active rollout, or an A/B test that completed)."""
        rollout = self.active() or self.latest()
        if rollout is None or (
            rollout["status"] not in ACTIVE and rollout["status"] != "completed"
        ):
            raise UsageError(
                "no rollout to promote",
                hint="start one with 'tidal rollout start VERSION'",
            )
        return self._promote(rollout, "promoted by hand")

    def _require_active(self) -> dict[str, Any]:
        rollout = self.active()
        if rollout is None:
            raise UsageError(
                f"{self.model} has no rollout running",
                hint="'tidal rollout status' shows the last one; start one with "
                "'tidal rollout start VERSION'",
            )
        return rollout

    # -- the state machine ----------------------------------------------------------------------

    def tick(self) -> dict[str, Any] | None:
        """Judge the active rollout's evidence and move it on; returns it (None: none active)."""
        rollout = self.active()
        if rollout is None or rollout["status"] == "paused":
            return rollout
        now = self.clock()
        if now > float(rollout["deadline"]):
            return self._rollback(
                rollout, "the rollout ran past rollout.max_execution_s", evidence=None
            )
        if rollout["status"] == "warming":
            return self._warming(rollout, now)
        return self._baking(rollout, now)

    def _warming(self, rollout: dict[str, Any], now: float) -> dict[str, Any]:
        latest = self.state.snapshots(rollout["id"], CANDIDATE, since=rollout["step_started_at"])
        if latest and latest[-1].get("workers", 0) > 0:
            step = rollout["steps"][0]
            rollout.update(traffic=step["traffic"], shadow=step["shadow"], step_started_at=now)
            return self._save(rollout, "baking", "the candidate is warm: switching traffic")
        if now - float(rollout["step_started_at"]) > WARM_TIMEOUT_S:
            return self._rollback(rollout, "the candidate never became ready", evidence=None)
        return rollout

    def _baking(self, rollout: dict[str, Any], now: float) -> dict[str, Any]:
        config = alarms.AlarmConfig(**rollout["alarms"])
        started = float(rollout["step_started_at"])
        window_s = float(rollout["window_s"])
        candidate = self._snapshots(rollout, CANDIDATE, since=started - window_s)
        primary = self._snapshots(rollout, PRIMARY, since=float(rollout["started_at"]))
        if not any(s.t >= started for s in candidate) and now - started > 3 * window_s:
            if rollout["on_lost_evidence"] == "rollback":
                return self._rollback(
                    rollout, "no statistics from the endpoint for this bake", evidence=None
                )
            rollout["step_started_at"] = now
            return self._save(rollout, "baking", "no statistics for this bake: baking again")
        # the last window: any alarm firing rolls back now
        alone = float(rollout["traffic"]) >= 100.0  # the baseline serves nothing meanwhile
        verdicts = self._judge(candidate, primary, config, now, window_s, alone=alone)
        if alarms.firing(verdicts):
            return self._rollback(rollout, _reason(verdicts), evidence=_evidence(verdicts))
        step = rollout["steps"][rollout["step"]]
        if now - started < float(step["bake_s"]):
            return rollout
        # the bake is over: judge it whole
        whole = self._judge(candidate, primary, config, now, now - started, alone=alone)
        if alarms.firing(whole):
            return self._rollback(rollout, _reason(whole), evidence=_evidence(whole))
        if not alarms.conclusive(whole):
            return self._no_data(rollout, whole, now)
        return self._advance(rollout, whole, now)

    def _judge(
        self,
        candidate: list[alarms.Snapshot],
        primary: list[alarms.Snapshot],
        config: alarms.AlarmConfig,
        now: float,
        window_s: float,
        *,
        alone: bool = False,
    ) -> list[alarms.Verdict]:
        cand = alarms.window_from(candidate, now, window_s)
        same = base = alarms.window_from(primary, now, window_s)
        if base.requests < config.min_samples and primary:
            base = alarms.window_from(primary, now, now - primary[0].t)  # all the rollout's
        verdicts = alarms.evaluate(cand, base, config, latency_baseline=same)
        if alone:
            # latency depends on the moment's load: with all traffic on the candidate there is
            # no baseline on the same window to compare it with, so latency is not judged
            verdicts = [v for v in verdicts if v.name != alarms.Alarm.LATENCY]
        if base.requests < config.min_samples:
            # nothing to compare with (100% of traffic from the start): only the candidate's
            # own alarms can be judged; the comparisons are left out, and said so
            verdicts = [v for v in verdicts if v.name == "error_rate"] or verdicts
        return verdicts

    def _snapshots(
        self, rollout: dict[str, Any], variant: str, since: float
    ) -> list[alarms.Snapshot]:
        rows = self.state.snapshots(rollout["id"], variant, since=since)
        return [alarms.Snapshot.from_dict(r) for r in rows]

    def _no_data(
        self, rollout: dict[str, Any], verdicts: list[alarms.Verdict], now: float
    ) -> dict[str, Any]:
        why = "; ".join(v.message for v in verdicts if v.state == "insufficient_data")
        if rollout["no_data"] == "extend" and rollout["extensions"] < rollout["max_extensions"]:
            # bake as long again; the evidence from the start of the step still counts
            rollout["extensions"] += 1
            step = rollout["steps"][rollout["step"]]
            step.setdefault("planned_bake_s", step["bake_s"])
            step["bake_s"] = float(step["bake_s"]) + float(step["planned_bake_s"])
            return self._save(
                rollout,
                "baking",
                f"bake extended ({rollout['extensions']}/{rollout['max_extensions']}): {why}",
            )
        return self._end(
            rollout, "inconclusive", f"not enough data to judge: {why}", _evidence(verdicts)
        )

    def _advance(
        self, rollout: dict[str, Any], verdicts: list[alarms.Verdict], now: float
    ) -> dict[str, Any]:
        rollout.setdefault("passed", []).append(
            {"step": rollout["step"], "evidence": _evidence(verdicts)}
        )
        if rollout["step"] + 1 < len(rollout["steps"]):
            rollout["step"] += 1
            step = rollout["steps"][rollout["step"]]
            rollout.update(
                traffic=step["traffic"], shadow=step["shadow"], step_started_at=now, extensions=0
            )
            return self._save(
                rollout,
                "baking",
                f"step {rollout['step']} passed its bake: candidate at {step['traffic']:g}%",
            )
        if rollout["strategy"] == "ab":
            candidate = self._snapshots(rollout, CANDIDATE, since=float(rollout["started_at"]))
            primary = self._snapshots(rollout, PRIMARY, since=float(rollout["started_at"]))
            span = now - float(rollout["started_at"])
            rollout["readout"] = alarms.ab_readout(
                alarms.window_from(primary, now, span), alarms.window_from(candidate, now, span)
            )
            return self._end(
                rollout, "completed", f"A/B test done: {rollout['readout']['summary']}", None
            )
        return self._promote(rollout, "every step passed its bake")

    # -- endings --------------------------------------------------------------------------------

    def _promote(self, rollout: dict[str, Any], reason: str) -> dict[str, Any]:
        from tidal.deploy import promote

        promote(
            self.ws,
            str(rollout["candidate_version"]),
            reason=f"rollout {rollout['id']} ({rollout['strategy']}): {reason}",
            run_id=rollout.get("run_id"),
        )
        rollout["terminate_at"] = self.clock() + float(rollout["termination_wait_s"])
        return self._end(rollout, "promoted", reason, None)

    def _rollback(
        self, rollout: dict[str, Any], reason: str, *, evidence: dict[str, Any] | None
    ) -> dict[str, Any]:
        from tidal.alerts import send_alert

        ended = self._end(rollout, "rolled_back", reason, evidence)
        send_alert(
            self.ws,
            "rollout_rolled_back",
            f"rollout {rollout['id']} of {self.model}: v{rollout['candidate_version']} rolled "
            f"back, all traffic on v{rollout['baseline_version']}: {reason}",
            data={"rollout_id": rollout["id"], "evidence": evidence},
        )
        return ended

    def _end(
        self, rollout: dict[str, Any], status: str, reason: str, evidence: dict[str, Any] | None
    ) -> dict[str, Any]:
        rollout.update(traffic=0.0, shadow=0.0, reason=reason, evidence=evidence)
        rollout["finished_at"] = self.clock()
        saved = self._save(rollout, status, reason)
        self.state.event(
            f"rollout_{status}",
            f"rollout {rollout['id']}: v{rollout['candidate_version']} {status}: {reason}",
            model=self.model,
            run_id=rollout.get("run_id"),
            data={"rollout_id": rollout["id"], "evidence": evidence},
        )
        log.info("rollout %s %s: %s", rollout["id"], status, reason)
        return saved

    def _save(self, rollout: dict[str, Any], status: str, note: str) -> dict[str, Any]:
        rollout.setdefault("history", []).append(
            {"t": self.clock(), "event": note, "status": status, "traffic": rollout["traffic"]}
        )
        doc = {k: v for k, v in rollout.items() if k not in ("id", "model", "status")}
        self.state.save_rollout(int(rollout["id"]), status, doc)
        return rollout | {"status": status}


def _reason(verdicts: list[alarms.Verdict]) -> str:
    return "; ".join(v.message for v in alarms.firing(verdicts))


def _evidence(verdicts: list[alarms.Verdict]) -> dict[str, Any]:
    return {
        v.name: {"state": v.state, "value": v.value, "threshold": v.threshold, **v.evidence}
        for v in verdicts
    }


def watch(
    ws: Workspace,
    stop: Any,
    *,
    interval_s: float = 0.5,
    until_done: bool = False,
    on_change: Any = None,
) -> dict[str, Any] | None:
    """Tick the model's rollouts every ``interval_s`` until ``stop`` (a threading.Event) is set,
    or, with ``until_done``, until no rollout is active. ``on_change(rollout)`` hears every
    status or step change. Errors are logged and the loop goes on."""
    manager = Manager(ws)
    seen: tuple[Any, ...] | None = None
    last: dict[str, Any] | None = None
    while not stop.is_set():
        try:
            last = manager.tick() or last
        except Exception:
            log.exception("rollout tick failed; trying again")
        if last is not None:
            key = (last.get("id"), last.get("status"), last.get("step"), last.get("traffic"))
            if key != seen and on_change is not None:
                on_change(last)
            seen = key
            if until_done and last.get("status") not in ACTIVE:
                return last
        elif until_done:
            return None
        stop.wait(interval_s)
    return last
