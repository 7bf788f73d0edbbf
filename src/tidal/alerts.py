"""Alerts: what a person must hear about (a rollout rolled back, drift, a quality floor crossed).

Sinks: the log (always: WARNING on logger ``tidal.alerts``), signed JSON webhooks
(``alerts.webhooks``) and Slack-compatible webhooks (``alerts.slack_webhooks``, a
``{"text": ...}`` body). Every alert has an id a person can quote (``alert_<12 hex>``) and is an
event of kind ``alert`` in the controller database (``tidal status``; ``find_alert``), its data:
``kind``, ``key``, the caller's ``data``, ``sent_to`` (sinks that took it), ``failed`` (sink:
reason), ``pending`` (sinks still being tried) and ``repeated``.

De-duplication: an alert with the same model, kind and key (default: the message) as one sent
less than ``alerts.dedup_s`` ago is not sent again; the first one's ``repeated`` count goes up
and its id is returned. The check and the record are one database transaction, so two processes
cannot both send.

Delivery runs in a (non-daemon) thread: the caller never waits for a receiver and never sees a
failure; a process exiting waits for its deliveries, at most ``attempts`` tries of
``alerts.timeout_s`` per connect and read for each sink. Connection errors, 429 and 5xx are
retried with a backoff; 4xx, redirects and refusals are not. Failures are logged and recorded.

Webhook safety, checked on every try, so a webhook cannot reach internal addresses:

- the URL's host must be on ``alerts.allowed_hosts`` exactly (an empty list allows none);
- https only, except http to a loopback host (``127.0.0.1``, ``::1``, ``localhost``);
- the host is resolved and only the resolved addresses that are public, or listed themselves in
  ``alerts.allowed_hosts``, are connected to: that same address, no second lookup (DNS
  rebinding), with TLS verified against the host name;
- redirects are never followed (a 3xx is a failure); no credentials in URLs.

Signature (``alerts.secret``, never logged): each webhook POST carries
``X-Tidal-Timestamp: <unix seconds>`` and ``X-Tidal-Signature: sha256=<hex>``, the HMAC-SHA256
of ``<timestamp>.<raw body>`` with the secret. A receiver recomputes it over the raw bytes it
received, compares in constant time, and refuses a timestamp older than a few minutes, so a
captured request cannot be replayed later (``verify`` does all three)::

    expected = "sha256=" + hmac.new(secret, f"{ts}.".encode() + body, "sha256").hexdigest()
    ok = hmac.compare_digest(expected, signature) and abs(time.time() - int(ts)) <= 300

The body's ``id`` is unique per alert: a receiver may also drop ids it has seen.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tidal.config import AlertsConfig
    from tidal.state import State
    from tidal.workspace import Workspace

log = logging.getLogger("tidal.alerts")

EVENT = "alert"
SIGNATURE_HEADER = "X-Tidal-Signature"
TIMESTAMP_HEADER = "X-Tidal-Timestamp"
MAX_AGE_S = 300.0

Resolver = Callable[[str, int], Sequence[str]]


class WebhookRefused(ValueError):
    """A webhook URL that policy forbids. Recorded as a failure, never raised to a sender;
    in tidal.yaml it is a ConfigError naming the setting."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` with ``secret``."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    max_age_s: float = MAX_AGE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature of exactly these bytes, and a recent timestamp."""
    try:
        ts = int(timestamp or "")
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), (signature or "").encode())


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def _norm(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def check_url(
    url: str, allowed_hosts: Sequence[str], *, setting: str = "alerts.webhooks"
) -> Target:
    """The static checks (no lookup): scheme, no credentials, host on the allow-list."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http"):
        raise WebhookRefused(f"{setting}: a webhook URL must be https:// (got {parts.scheme!r})")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused(f"{setting}: a webhook URL must not carry user:password@")
    host = _norm(parts.hostname or "")
    if not host:
        raise WebhookRefused(f"{setting}: a webhook URL needs a host")
    allowed = {_norm(h) for h in allowed_hosts}
    if not allowed:
        raise WebhookRefused(
            f"{setting} is set but alerts.allowed_hosts is empty, so no webhook may be sent; "
            f"list each receiver's host (exact name or IP) in alerts.allowed_hosts"
        )
    addr = _ip(host)
    if host not in allowed and not (addr and addr in {_ip(h) for h in allowed}):
        raise WebhookRefused(
            f"{setting}: host {host!r} is not in alerts.allowed_hosts "
            f"({', '.join(sorted(allowed))}); add it there to allow it"
        )
    if parts.scheme == "http" and not (host == "localhost" or (addr and addr.is_loopback)):
        raise WebhookRefused(
            f"{setting}: http:// is allowed only to a loopback host (127.0.0.1, ::1, localhost); "
            f"use https:// for {host!r}"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def addresses(target: Target, allowed_hosts: Sequence[str], resolve: Resolver) -> list[str]:
    """The resolved addresses of ``target`` that may be connected to, or WebhookRefused."""
    listed = {a for a in (_ip(_norm(h)) for h in allowed_hosts) if a is not None}
    found = list(resolve(target.host, target.port))
    usable: list[str] = []
    refused: list[str] = []
    for text in found:
        addr = _ip(text)
        internal = addr is None or not addr.is_global or addr.is_multicast
        http_ok = target.scheme == "https" or (addr is not None and addr.is_loopback)
        (usable if (addr in listed or not internal) and http_ok else refused).append(text)
    if not usable:
        raise WebhookRefused(
            f"host {target.host!r} resolves to {', '.join(refused) or 'nothing'}: internal "
            f"addresses are reached only when listed themselves in alerts.allowed_hosts"
            + ("" if target.scheme == "https" else ", and http:// only on loopback")
        )
    return usable


class _Pinned(http.client.HTTPConnection):
    """Connects to addresses already checked, never to a second lookup of the host name; with
    ``tls``, verifies the certificate against the host name."""

    def __init__(
        self, target: Target, ips: list[str], timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.ips, self.tls, self.default_port = ips, tls, 443 if tls else 80

    def connect(self) -> None:
        error = OSError("no address to connect to")
        for ip in self.ips:
            try:
                sock = socket.create_connection((ip, self.port), self.timeout)
            except OSError as exc:
                error = exc
                continue
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
            return
        raise error


@dataclass(frozen=True)
class Alert:
    id: str
    kind: str
    key: str
    message: str
    model: str | None
    ts: float
    data: dict[str, Any]


@dataclass(frozen=True)
class _Sink:
    name: str  # "webhook[0] hooks.example.com:443", what logs and records say: never the path
    url: str
    style: Literal["webhook", "slack"]


class Alerter:
    """Sends alerts of one model through the configured sinks; ``send`` never raises."""

    def __init__(
        self,
        config: AlertsConfig,
        state: State,
        *,
        model: str | None = None,
        clock: Callable[[], float] = time.time,
        resolve: Resolver = system_resolver,
        attempts: int = 3,
        backoff_s: float = 0.5,
        tls: ssl.SSLContext | None = None,
        background: bool = True,
    ) -> None:
        self.config, self.state, self.model, self.clock = config, state, model, clock
        self.resolve, self.attempts, self.backoff_s = resolve, attempts, backoff_s
        self.background, self._tls = background, tls
        self._secret = config.secret.get_secret_value().encode() if config.secret else None
        self._threads: list[threading.Thread] = []
        self.sinks = [
            _Sink(f"webhook[{i}] {_label(u)}", u, "webhook") for i, u in enumerate(config.webhooks)
        ]
        self.sinks += [
            _Sink(f"slack[{i}] {_label(u)}", u, "slack")
            for i, u in enumerate(config.slack_webhooks)
        ]

    def send(
        self, kind: str, message: str, *, key: str | None = None, data: dict[str, Any] | None = None
    ) -> str:
        """Log, record and (unless a duplicate) deliver one alert; returns its id."""
        key = message if key is None else key
        alert = Alert(_new_id(), kind, key, message, self.model, self.clock(), data or {})
        try:
            first_id, row_id, repeated = self._record(alert)
        except Exception:
            log.exception("alert %s: could not be recorded; sending it anyway", alert.id)
            first_id, row_id, repeated = alert.id, None, 0
        if repeated:
            log.info(
                "%s [%s] repeated %d times, not sent again: %s", kind, first_id, repeated, message
            )
            return first_id
        log.warning("%s [%s]: %s", kind, alert.id, message)
        if self.sinks and self.background:
            thread = threading.Thread(target=self._deliver, args=(alert, row_id), name=alert.id)
            try:
                thread.start()
                self._threads.append(thread)
            except RuntimeError:  # no thread to be had: deliver here rather than not at all
                self._deliver(alert, row_id)
        elif self.sinks:
            self._deliver(alert, row_id)
        return alert.id

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the deliveries this alerter started."""
        for thread in self._threads:
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    # -- record -------------------------------------------------------------------------------

    def _record(self, alert: Alert) -> tuple[str, int | None, int]:
        """(id of the alert, its event row, repeats): a new row, or a repeat of a recent one."""
        with self.state.tx() as db:
            if self.config.dedup_s > 0:
                since = alert.ts - self.config.dedup_s
                row = db.execute(
                    "SELECT id, data FROM events WHERE kind = ? AND ts >= ? AND model IS ? AND "
                    "json_extract(data, '$.kind') = ? AND json_extract(data, '$.key') = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (EVENT, since, alert.model, alert.kind, alert.key),
                ).fetchone()
                if row is not None:
                    first = json.loads(row["data"])
                    first.update(repeated=first.get("repeated", 0) + 1, last_ts=alert.ts)
                    db.execute(
                        "UPDATE events SET data = ? WHERE id = ?", (_dumps(first), row["id"])
                    )
                    return str(first["alert_id"]), None, int(first["repeated"])
            doc: dict[str, Any] = {
                "alert_id": alert.id,
                "kind": alert.kind,
                "key": alert.key,
                "data": alert.data,
            }
            doc |= {"sent_to": ["log"], "failed": {}, "pending": [s.name for s in self.sinks]}
            doc |= {"repeated": 0, "last_ts": alert.ts}
            message = f"{alert.kind} [{alert.id}]: {alert.message}"
            cursor = db.execute(
                "INSERT INTO events(ts, kind, model, message, data) VALUES (?,?,?,?,?)",
                (alert.ts, EVENT, alert.model, message, _dumps(doc)),
            )
            return alert.id, cursor.lastrowid, 0

    def _finish(self, row_id: int, sent: list[str], failed: dict[str, str]) -> None:
        with self.state.tx() as db:
            row = db.execute("SELECT data FROM events WHERE id = ?", (row_id,)).fetchone()
            doc = json.loads(row["data"])
            doc.update(sent_to=doc["sent_to"] + sent, failed=doc["failed"] | failed, pending=[])
            db.execute("UPDATE events SET data = ? WHERE id = ?", (_dumps(doc), row_id))

    # -- delivery -----------------------------------------------------------------------------

    def _deliver(self, alert: Alert, row_id: int | None) -> None:
        sent, failed = [], {}
        for sink in self.sinks:
            try:
                error = self._send_one(sink, alert)
            except Exception as exc:  # a bug must not end the thread unrecorded
                log.exception("alert %s: %s failed", alert.id, sink.name)
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                sent.append(sink.name)
            else:
                failed[sink.name] = error
                log.warning("alert %s: %s failed: %s", alert.id, sink.name, error)
        try:
            if row_id is not None:
                self._finish(row_id, sent, failed)
        except Exception:
            log.exception("alert %s: its delivery could not be recorded", alert.id)

    def _send_one(self, sink: _Sink, alert: Alert) -> str | None:
        """None when the sink took it, else why not (after the tries that may help)."""
        if sink.style == "slack":
            text = f"*{alert.kind}*: {alert.message} ({alert.id})"
            body = _dumps(
                {"text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}
            )
        else:
            body = _dumps(asdict(alert))
        reason = ""
        for attempt in range(1, self.attempts + 1):
            headers = {"Content-Type": "application/json", "User-Agent": "tidal-alerts"}
            if sink.style == "webhook":
                if self._secret is None:
                    return "refused: webhooks are signed and alerts.secret is not set"
                ts = int(time.time())
                headers[TIMESTAMP_HEADER] = str(ts)
                headers[SIGNATURE_HEADER] = sign(self._secret, ts, body.encode())
            try:
                target = check_url(sink.url, self.config.allowed_hosts, setting=sink.name)
                ips = addresses(target, self.config.allowed_hosts, self.resolve)
                status, location = self._post(target, ips, body.encode(), headers)
            except WebhookRefused as exc:
                return f"refused: {exc}"
            except ssl.SSLCertVerificationError as exc:
                return f"refused: TLS certificate: {exc.verify_message}"
            except (OSError, http.client.HTTPException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    return None
                if 300 <= status < 400:
                    return f"refused: HTTP {status} redirect to {_label(location)} not followed"
                reason = f"HTTP {status}"
                if status < 500 and status != 429:
                    return reason
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        return f"{reason} after {self.attempts} attempts"

    def _post(
        self, target: Target, ips: list[str], body: bytes, headers: dict[str, str]
    ) -> tuple[int, str]:
        if target.scheme == "https":
            self._tls = self._tls or ssl.create_default_context()
        conn = _Pinned(
            target, ips, self.config.timeout_s, self._tls if target.scheme == "https" else None
        )
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(65536)
            return response.status, response.getheader("Location") or ""
        finally:
            conn.close()


def _new_id() -> str:
    return "alert_" + uuid.uuid4().hex[:12]


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _label(url: str) -> str:
    """``host:port`` of a URL, for logs and records: its path and query may hold a token."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or '?'}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return "?"


def find_alert(state: State, alert_id: str) -> dict[str, Any] | None:
    """The event recorded for ``alert_id`` (its data: delivery, failures, repeats), or None."""
    with state.tx() as db:
        row = db.execute(
            "SELECT * FROM events WHERE kind = ? AND json_extract(data, '$.alert_id') = ?",
            (EVENT, alert_id),
        ).fetchone()
    return None if row is None else dict(row) | {"data": json.loads(row["data"])}


def send_alert(
    ws: Workspace,
    kind: str,
    message: str,
    *,
    key: str | None = None,
    data: dict[str, Any] | None = None,
) -> str:
    """Send an alert through every configured sink; returns its id. Never raises."""
    try:
        alerter = Alerter(ws.config.alerts, ws.state, model=ws.model_name)
    except Exception:
        log.exception("%s: alert sinks unavailable, only logged: %s", kind, message)
        return _new_id()
    return alerter.send(kind, message, key=key, data=data)
