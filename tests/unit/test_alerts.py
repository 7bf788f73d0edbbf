"""Alerts without a receiver: signing, the webhook allow-list, de-duplication and the record.

Delivery is observed by replacing ``Alerter._post`` (the one place that opens a connection),
except where a test needs to see that no connection is made at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tidal.alerts import (
    Alerter,
    Target,
    WebhookRefused,
    addresses,
    check_url,
    find_alert,
    send_alert,
    sign,
    verify,
)
from tidal.config import AlertsConfig, Config, load_config, render_yaml
from tidal.errors import ConfigError
from tidal.state import State
from tidal.workspace import Workspace

SECRET = "not-a-real-secret-4f1c"
PUBLIC_IP = "93.184.216.34"
HOOK = "https://hooks.example.com/tidal"
SLACK = "https://hooks.slack.com/services/T000/B000/slacktoken123"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Posts:
    """Stands in for ``Alerter._post``: records each call, answers from ``replies`` in turn."""

    def __init__(self, *replies: tuple[int, str] | Exception) -> None:
        self.replies = list(replies) or [(200, "")]
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, target: Target, ips: list[str], body: bytes, headers: dict[str, str]
    ) -> tuple[int, str]:
        self.calls.append({"host": target.host, "ips": ips, "body": body, "headers": headers})
        reply = self.replies[min(len(self.calls), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


def alerter(state: State, clock: Clock | None = None, **config: Any) -> Alerter:
    settings: dict[str, Any] = {"allowed_hosts": ["hooks.example.com", "hooks.slack.com"]}
    settings["secret"] = SECRET
    return Alerter(
        AlertsConfig.model_validate(settings | config),
        state,
        model="churn",
        clock=clock or Clock(),
        resolve=lambda host, port: [PUBLIC_IP],
        backoff_s=0.0,
        background=False,
    )


def alert_events(state: State) -> list[dict[str, Any]]:
    return [e for e in state.events(100) if e["kind"] == "alert"]


# -- signing ----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id": "alert_0123456789ab"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET.encode(), 1700000000, body) == f"sha256={expected}"
    assert verify(SECRET.encode(), body, f"sha256={expected}", "1700000000", now=1700000010)


@pytest.mark.parametrize(
    ("secret", "body", "timestamp", "now"),
    [
        (b"another-secret", b'{"a": 1}', "1700000000", 1700000000),  # wrong secret
        (SECRET.encode(), b'{"a": 2}', "1700000000", 1700000000),  # body changed
        (SECRET.encode(), b'{"a": 1}', "1700000001", 1700000001),  # timestamp header changed
        (SECRET.encode(), b'{"a": 1}', "1700000000", 1700000000 + 301),  # replayed too late
        (SECRET.encode(), b'{"a": 1}', "soon", 1700000000),
        (SECRET.encode(), b'{"a": 1}', None, 1700000000),
    ],
)
def test_verify_refuses_what_was_not_signed_just_now(
    secret: bytes, body: bytes, timestamp: str | None, now: float
) -> None:
    signature = sign(SECRET.encode(), 1700000000, b'{"a": 1}')
    assert verify(SECRET.encode(), b'{"a": 1}', signature, "1700000000", now=1700000000)
    assert not verify(secret, body, signature, timestamp, now=now)


def test_verify_refuses_a_missing_or_malformed_signature() -> None:
    assert not verify(SECRET.encode(), b"{}", None, "1700000000", now=1700000000)
    assert not verify(SECRET.encode(), b"{}", "sha256=é", "1700000000", now=1700000000)


# -- the configuration ------------------------------------------------------------------------


def test_a_webhook_without_an_allow_list_is_a_config_error(tmp_path: Path) -> None:
    env = {"TIDAL_ALERTS__WEBHOOKS": f'["{HOOK}"]', "TIDAL_ALERTS__SECRET": SECRET}
    with pytest.raises(ConfigError, match=r"alerts\.webhooks.*alerts\.allowed_hosts is empty"):
        load_config(tmp_path, environ=env)
    env = {"TIDAL_ALERTS__SLACK_WEBHOOKS": f'["{SLACK}"]'}
    with pytest.raises(ConfigError, match=r"alerts\.slack_webhooks.*allowed_hosts is empty"):
        load_config(tmp_path, environ=env)


@pytest.mark.parametrize(
    ("url", "allowed", "error"),
    [
        ("https://evil.example.com/x", ["hooks.example.com"], "'evil.example.com' is not in"),
        ("https://hooks.example.com.evil.net/", ["hooks.example.com"], "is not in"),
        ("https://169.254.169.254/latest", ["hooks.example.com"], "'169.254.169.254' is not in"),
        ("http://hooks.example.com/x", ["hooks.example.com"], "http:// is allowed only to a loop"),
        ("http://10.0.0.7/x", ["10.0.0.7"], "http:// is allowed only to a loopback"),
        ("https://u:p@hooks.example.com/", ["hooks.example.com"], "must not carry user:password"),
        ("ftp://hooks.example.com/", ["hooks.example.com"], "must be https://"),
    ],
)
def test_webhook_urls_off_the_allow_list_are_refused(
    url: str, allowed: list[str], error: str
) -> None:
    with pytest.raises(WebhookRefused, match=re.escape(error)):
        check_url(url, allowed)
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(
            Path("/nonexistent"),
            overrides={"alerts": {"allowed_hosts": allowed, "webhooks": [url], "secret": SECRET}},
        )


def test_allowed_urls_pass_with_their_port_and_path() -> None:
    target = check_url("https://Hooks.Example.com./a/b?x=1", ["hooks.example.com"])
    assert target == Target("https", "hooks.example.com", 443, "/a/b?x=1")
    assert check_url("http://127.0.0.1:8099", ["127.0.0.1"]).port == 8099
    assert check_url("http://[::1]:8099/", ["::1"]).host == "::1"
    assert check_url("http://localhost:8099/", ["localhost"]).scheme == "http"


def test_signed_webhooks_need_a_secret_that_is_never_shown(tmp_path: Path) -> None:
    alerts = {"allowed_hosts": ["hooks.example.com"], "webhooks": [HOOK]}
    with pytest.raises(ConfigError, match=r"alerts\.secret.*TIDAL_ALERTS__SECRET"):
        load_config(tmp_path, overrides={"alerts": alerts})
    env = {"TIDAL_ALERTS__SECRET": SECRET}
    config = load_config(tmp_path, environ=env, overrides={"alerts": alerts})
    assert config.alerts.secret is not None
    assert config.alerts.secret.get_secret_value() == SECRET
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump())
    assert SECRET not in render_yaml(
        config
    ) and "allowed_hosts: [hooks.example.com]" in render_yaml(config)
    with pytest.raises(ConfigError) as error:
        load_config(
            tmp_path, environ=env | {"TIDAL_ALERTS__DEDUP_S": "-1"}, overrides={"alerts": alerts}
        )
    assert "alerts.dedup_s" in str(error.value) and SECRET not in str(error.value)


def test_defaults_send_nothing_but_the_log() -> None:
    alerts = Config().alerts
    assert (alerts.webhooks, alerts.slack_webhooks, alerts.allowed_hosts) == ([], [], [])
    assert (alerts.dedup_s, alerts.timeout_s, alerts.secret) == (900.0, 2.0, None)


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resolved",
    [
        ["10.0.0.5"],
        ["169.254.169.254"],
        ["127.0.0.1"],
        ["::1"],
        ["::ffff:10.0.0.1"],
        ["fd00::1"],
        ["0.0.0.0"],
        ["100.64.0.1"],
        ["224.0.0.1"],
        [],
    ],
)
def test_an_allowed_name_resolving_inside_is_refused(resolved: list[str]) -> None:
    target = check_url(HOOK, ["hooks.example.com"])
    with pytest.raises(WebhookRefused, match="internal addresses are reached only when listed"):
        addresses(target, ["hooks.example.com"], lambda host, port: resolved)


def test_only_public_or_listed_addresses_are_connected_to() -> None:
    target = check_url(HOOK, ["hooks.example.com"])
    both = [PUBLIC_IP, "10.0.0.5"]
    assert addresses(target, ["hooks.example.com"], lambda h, p: both) == [PUBLIC_IP]
    listed = ["hooks.example.com", "10.0.0.5"]
    assert addresses(target, listed, lambda h, p: ["10.0.0.5"]) == ["10.0.0.5"]
    local = check_url("http://localhost:8099/", ["localhost", "127.0.0.1"])
    loopback = ["127.0.0.1", "::1"]
    assert addresses(local, ["localhost", "127.0.0.1"], lambda h, p: loopback) == ["127.0.0.1"]


def test_a_refused_address_is_never_connected_to(state: State) -> None:
    """hooks.example.com is allowed by name but resolves to loopback: nothing may connect."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        port = listener.getsockname()[1]
        sender = alerter(state, webhooks=[f"https://hooks.example.com:{port}/x"])
        sender.resolve = lambda host, port: ["127.0.0.1"]
        alert_id = sender.send("drift", "feature x drifted")
        with pytest.raises(TimeoutError):
            listener.accept()
    record = find_alert(state, alert_id)
    assert record is not None
    (reason,) = record["data"]["failed"].values()
    assert reason.startswith("refused: host 'hooks.example.com' resolves to 127.0.0.1")


def test_a_redirect_is_never_followed(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    posts = Posts((302, "http://169.254.169.254/latest/meta-data"))
    monkeypatch.setattr(Alerter, "_post", posts)
    alert_id = alerter(state, webhooks=[HOOK]).send("drift", "feature x drifted")
    assert len(posts.calls) == 1  # neither followed nor retried
    record = find_alert(state, alert_id)
    assert record is not None
    assert record["data"]["failed"] == {
        "webhook[0] hooks.example.com:443": "refused: HTTP 302 redirect to 169.254.169.254:80 "
        "not followed"
    }


# -- sending, retries, the record ------------------------------------------------------------


def test_a_sent_alert_is_signed_and_recorded(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    posts = Posts()
    monkeypatch.setattr(Alerter, "_post", posts)
    alert_id = alerter(state, webhooks=[HOOK], slack_webhooks=[SLACK]).send(
        "quality", "accuracy 0.61 < floor 0.7", data={"accuracy": 0.61}
    )
    assert re.fullmatch(r"alert_[0-9a-f]{12}", alert_id)
    hook, slack = posts.calls
    assert hook["ips"] == [PUBLIC_IP] and slack["host"] == "hooks.slack.com"
    assert verify(
        SECRET.encode(),
        hook["body"],
        hook["headers"]["X-Tidal-Signature"],
        hook["headers"]["X-Tidal-Timestamp"],
    )
    assert b'"id": "%s"' % alert_id.encode() in hook["body"]
    assert (
        slack["body"]
        == b'{"text": "*quality*: accuracy 0.61 &lt; floor 0.7 (%s)"}' % alert_id.encode()
    )
    assert "X-Tidal-Signature" not in slack["headers"]
    (event,) = alert_events(state)
    assert (
        event["model"] == "churn"
        and event["message"] == f"quality [{alert_id}]: accuracy 0.61 < floor 0.7"
    )
    data = event["data"]
    assert data["sent_to"] == [
        "log",
        "webhook[0] hooks.example.com:443",
        "slack[0] hooks.slack.com:443",
    ]
    assert (data["failed"], data["pending"], data["data"]) == ({}, [], {"accuracy": 0.61})


@pytest.mark.parametrize(
    ("replies", "tries", "reason"),
    [
        (
            [ConnectionRefusedError(111, "Connection refused")],
            3,
            "ConnectionRefusedError: [Errno 111] Connection refused after 3 attempts",
        ),
        ([(500, "")], 3, "HTTP 500 after 3 attempts"),
        ([(503, ""), (200, "")], 2, None),
        ([(429, ""), (429, ""), (200, "")], 3, None),
        ([(404, "")], 1, "HTTP 404"),
        ([TimeoutError("timed out")], 3, "TimeoutError: timed out after 3 attempts"),
    ],
)
def test_retries_are_bounded_and_failures_recorded(
    state: State,
    monkeypatch: pytest.MonkeyPatch,
    replies: list[Any],
    tries: int,
    reason: str | None,
) -> None:
    posts = Posts(*replies)
    monkeypatch.setattr(Alerter, "_post", posts)
    alert_id = alerter(state, webhooks=[HOOK]).send("drift", "feature x drifted")
    assert len(posts.calls) == tries
    record = find_alert(state, alert_id)
    assert record is not None
    sink = "webhook[0] hooks.example.com:443"
    assert record["data"]["failed"] == ({} if reason is None else {sink: reason})
    assert (sink in record["data"]["sent_to"]) is (reason is None)


def test_secrets_and_slack_tokens_are_never_logged_or_recorded(
    state: State, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Alerter, "_post", Posts(ConnectionRefusedError(111, "Connection refused")))
    caplog.set_level(logging.DEBUG)
    alerter(state, webhooks=[HOOK], slack_webhooks=[SLACK]).send("drift", "feature x drifted")
    assert "slack[0] hooks.slack.com:443 failed" in caplog.text
    stored = str(state.events(100))
    for text in (SECRET, "slacktoken123", "/tidal"):
        assert text not in caplog.text and text not in stored


# -- de-duplication ---------------------------------------------------------------------------


def test_the_same_alert_is_sent_once_per_window_and_counted(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    posts = Posts()
    monkeypatch.setattr(Alerter, "_post", posts)
    clock = Clock()
    sender = alerter(state, clock, webhooks=[HOOK], dedup_s=900)
    first = sender.send("drift", "PSI 0.31 on age", key="age")
    clock.now += 600
    assert sender.send("drift", "PSI 0.35 on age", key="age") == first
    assert sender.send("drift", "PSI 0.40 on age", key="age") == first
    assert len(posts.calls) == 1
    (event,) = alert_events(state)
    assert event["data"]["repeated"] == 2 and event["data"]["last_ts"] == clock.now

    other_key = sender.send("drift", "PSI 0.5 on income", key="income")
    other_kind = sender.send("quality", "PSI 0.40 on age", key="age")
    other_model = alerter(state, clock, webhooks=[HOOK])
    other_model.model = "fraud"
    assert len({first, other_key, other_kind, other_model.send("drift", "x", key="age")}) == 4
    assert len(posts.calls) == 4

    clock.now += 301  # 901 s after the first one was sent
    again = sender.send("drift", "PSI 0.45 on age", key="age")
    assert again != first and len(posts.calls) == 5


def test_without_a_key_the_message_is_the_key_and_dedup_can_be_off(state: State) -> None:
    clock = Clock()
    sender = alerter(state, clock)
    assert sender.send("rollback", "rollout 1 rolled back") == sender.send(
        "rollback", "rollout 1 rolled back"
    )
    assert sender.send("rollback", "rollout 2 rolled back") != sender.send(
        "rollback", "rollout 1 rolled back"
    )
    undeduped = alerter(state, clock, dedup_s=0)
    assert undeduped.send("rollback", "rollout 3") != undeduped.send("rollback", "rollout 3")
    assert len(alert_events(state)) == 4


# -- the function the rollout manager calls ---------------------------------------------------


def test_send_alert_logs_and_records_with_the_workspace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = Workspace(tmp_path, Config(project="churn"))
    with caplog.at_level(logging.WARNING, logger="tidal.alerts"):
        alert_id = send_alert(
            ws, "rollout_rolled_back", "rollout 3 rolled back", data={"rollout_id": 3}
        )
    assert f"rollout_rolled_back [{alert_id}]: rollout 3 rolled back" in caplog.text
    record = find_alert(ws.state, alert_id)
    assert record is not None and record["model"] == "churn"
    assert record["data"]["data"] == {"rollout_id": 3} and record["data"]["sent_to"] == ["log"]
    assert find_alert(ws.state, "alert_000000000000") is None


def test_a_broken_event_store_never_reaches_the_caller(
    state: State, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    posts = Posts()
    monkeypatch.setattr(Alerter, "_post", posts)

    def locked() -> Any:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(state, "tx", locked)
    alert_id = alerter(state, webhooks=[HOOK]).send("drift", "feature x drifted")
    assert re.fullmatch(r"alert_[0-9a-f]{12}", alert_id)
    assert len(posts.calls) == 1  # still delivered
    assert "could not be recorded" in caplog.text
