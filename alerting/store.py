"""The relay's durable state in SQLite (WAL): outbox, idempotency keys, dead letters, attempt log.

* Outbox: a webhook is acknowledged to Alertmanager only after its deliveries are committed here
  (``synchronous=FULL``), and workers deliver from here, so a relay crash loses nothing: pending
  deliveries resume on the next start.
* Idempotency: one row per (fingerprint, status, startsAt, receiver, recipient), enforced by a UNIQUE key.
  Alertmanager re-sends a group on every change (group_interval), on repeat_interval and when a webhook
  failed; every re-sent alert maps to an existing key and is counted as a duplicate, so nobody is paged twice.
* A resolved message is queued only for recipients who were queued the firing one (the same *story*), and is
  held back while that firing message is still on its way, so the end of a story never arrives first.
* Dead letters are rows in state ``dead`` with the reason, attempts and last error; ``resend`` moves them back.
* Batches: the rows one webhook queued for one recipient with one status share a ``batch_key``; the relay sends
  them as ONE message (a fault storm Alertmanager grouped stays one page), while keys, stories, attempts and
  dead letters stay per alert.
* Attempts: one row per attempt outcome, shipped to ClickHouse by :mod:`alerting.delivery_log`.

Rows of delivered alerts are pruned after ``KEEP_DAYS`` (their keys with them: an alert still firing after
that long may page once more on its next repeat). Dead letters stay until resent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from alerting.diagnoses import FOLLOW_UP_ALERTNAME, Diagnosis, iso_ms
from alerting.oncall import severity_rank
from alerting.payload import Alert
from alerting.threads import SlackThread

KEEP_DAYS = 30.0
FOLLOW_UP_WINDOW_S = 3600.0  # a diagnosis is followed up to recipients paged within this long of its arrival
PENDING, DELIVERED, DEAD, RESENDING = "pending", "delivered", "dead", "resending"
Outcome = Literal["delivered", "retry", "dead_letter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    story_key       TEXT NOT NULL,              -- firing and resolved message of one alert to one recipient
    batch_key       TEXT NOT NULL DEFAULT '',   -- rows sent together as one message ('' = alone)
    receiver        TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    address         TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    alert_status    TEXT NOT NULL,              -- firing | resolved
    starts_at       TEXT NOT NULL,
    alertname       TEXT NOT NULL,
    equipment_id    TEXT NOT NULL,
    site            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    alert_json      TEXT NOT NULL,
    external_url    TEXT NOT NULL,
    state           TEXT NOT NULL,              -- pending | delivered | dead | resending
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL,
    reason          TEXT,
    last_error      TEXT,
    last_status     INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_work ON deliveries (state, receiver, id);
CREATE INDEX IF NOT EXISTS deliveries_story ON deliveries (story_key);
CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at           REAL NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,                 -- delivered | retry | dead_letter
    status       INTEGER,                       -- HTTP status or SMTP reply code; NULL: no answer
    error        TEXT NOT NULL,
    latency_ms   REAL NOT NULL,
    shipped      INTEGER NOT NULL DEFAULT 0     -- 1 once in ClickHouse
);
CREATE INDEX IF NOT EXISTS attempts_unshipped ON attempts (id) WHERE shipped = 0;
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
CREATE INDEX IF NOT EXISTS deliveries_machine ON deliveries (equipment_id, starts_at);
CREATE TABLE IF NOT EXISTS diagnoses (              -- newest agent diagnosis per (machine, episode)
    equipment_id   TEXT NOT NULL,
    episode_id     TEXT NOT NULL,
    first_at       TEXT NOT NULL,                   -- alerts starting in [first_at, last_at] belong to it
    last_at        TEXT NOT NULL,
    closed         INTEGER NOT NULL,                -- 0: preliminary (episode still going on)
    fault_type     TEXT NOT NULL,
    diagnosis_json TEXT NOT NULL,
    updated_at     REAL NOT NULL,
    PRIMARY KEY (equipment_id, episode_id)
);
CREATE INDEX IF NOT EXISTS diagnoses_recent ON diagnoses (updated_at);
CREATE TABLE IF NOT EXISTS slack_threads (          -- the newest Slack thread of a machine per recipient (Web API)
    recipient    TEXT NOT NULL,
    equipment_id TEXT NOT NULL,
    channel      TEXT NOT NULL,
    ts           TEXT NOT NULL,
    severity     TEXT NOT NULL,                    -- the worst severity told in it so far
    last_at      REAL NOT NULL,                    -- its last message
    PRIMARY KEY (recipient, equipment_id)
);
CREATE TABLE IF NOT EXISTS told (                   -- who has read which diagnosis (in an alert or a follow-up)
    receiver     TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    equipment_id TEXT NOT NULL,
    episode_id   TEXT NOT NULL,
    fault_type   TEXT NOT NULL,
    at           REAL NOT NULL,
    PRIMARY KEY (receiver, recipient, equipment_id, episode_id, fault_type)
);
"""


def _digest(*parts: str, size: int = 32) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:size]


def starts_at_key(alert: Alert) -> str:
    return alert.startsAt.isoformat(timespec="microseconds")


def idempotency_key(alert: Alert, receiver: str, recipient: str) -> str:
    """Same alert (fingerprint + startsAt), same status, same recipient -> same key -> sent once."""
    return _digest(alert.fingerprint, alert.status, starts_at_key(alert), receiver, recipient)


def story_key(alert: Alert, receiver: str, recipient: str) -> str:
    """Shared by an alert's firing and resolved message to one recipient."""
    return _digest(alert.fingerprint, starts_at_key(alert), receiver, recipient, size=24)


@dataclass(frozen=True)
class NewDelivery:
    """One message to queue: an alert for one recipient of one receiver."""

    receiver: str
    recipient: str
    address: str
    alert: Alert
    external_url: str = ""
    batch_key: str = ""  # items with the same key go out as one message


@dataclass
class EnqueueResult:
    queued: list[int] = field(default_factory=list)  # ids of new outbox rows
    duplicates: int = 0  # already queued or sent before (Alertmanager re-sends)
    unannounced: int = 0  # resolved alerts whose firing message this recipient never got


@dataclass(frozen=True)
class Delivery:
    """One outbox row."""

    id: int
    receiver: str
    recipient: str
    address: str
    fingerprint: str
    alert_status: str
    starts_at: str
    alertname: str
    equipment_id: str
    site: str
    severity: str
    alert_json: str
    external_url: str
    story_key: str
    state: str
    attempts: int
    created_at: float
    updated_at: float
    delivered_at: float | None
    reason: str | None
    last_error: str | None
    last_status: int | None
    batch_key: str = ""

    def alert(self) -> Alert:
        return Alert.model_validate_json(self.alert_json)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt with the fields of its delivery (a delivery-log row)."""

    id: int
    at: float
    attempt: int
    outcome: str
    status: int | None
    error: str
    latency_ms: float
    delivery_id: int
    receiver: str
    recipient: str
    fingerprint: str
    alertname: str
    equipment_id: str
    site: str
    severity: str
    alert_status: str


_DELIVERY_COLUMNS = ", ".join(Delivery.__dataclass_fields__)
_ATTEMPT_SELECT = """
SELECT a.id, a.at, a.attempt, a.outcome, a.status, a.error, a.latency_ms, d.id AS delivery_id, d.receiver,
       d.recipient, d.fingerprint, d.alertname, d.equipment_id, d.site, d.severity, d.alert_status
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
"""


def _announced(db: sqlite3.Connection, story: str) -> bool:
    """Whether the firing message of this story was queued (so its resolved message may follow)."""
    query = "SELECT 1 FROM deliveries WHERE story_key = ? AND alert_status = 'firing' LIMIT 1"
    return db.execute(query, (story,)).fetchone() is not None


def _insert(db: sqlite3.Connection, item: NewDelivery, result: EnqueueResult, now: float) -> None:
    alert = item.alert
    story = story_key(alert, item.receiver, item.recipient)
    if alert.status == "resolved" and not _announced(db, story):
        result.unannounced += 1
        return
    cursor = db.execute(
        """INSERT INTO deliveries (idempotency_key, story_key, batch_key, receiver, recipient, address,
               fingerprint, alert_status, starts_at, alertname, equipment_id, site, severity, alert_json,
               external_url, state, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (idempotency_key) DO NOTHING""",
        (
            idempotency_key(alert, item.receiver, item.recipient),
            story,
            item.batch_key,
            item.receiver,
            item.recipient,
            item.address,
            alert.fingerprint,
            alert.status,
            starts_at_key(alert),
            alert.label("alertname"),
            alert.label("equipment_id"),
            alert.label("site"),
            alert.label("severity"),
            alert.model_dump_json(),
            item.external_url,
            PENDING,
            now,
            now,
        ),
    )
    if cursor.rowcount:
        result.queued.append(int(cursor.lastrowid))  # type: ignore[arg-type]
    else:
        result.duplicates += 1


@dataclass(frozen=True)
class FollowUp:
    """A recipient who was paged about a machine's episode and has not read its current diagnosis yet."""

    receiver: str
    recipient: str
    address: str
    external_url: str
    diagnosis: Diagnosis


def _diagnosis(row: sqlite3.Row) -> Diagnosis:
    data = orjson.loads(row["diagnosis_json"])
    data["sensors"] = tuple(data.get("sensors", ()))
    return Diagnosis(**data)


class Store:
    """Thread-safe access to the relay's SQLite file (one connection, serialised; several processes may share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            self._db.execute(f"PRAGMA {pragma}")
        with self._lock:
            self._db.executescript(_SCHEMA)  # idempotent; runs in its own transaction
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(deliveries)")}
            if "batch_key" not in columns:  # a state file written before batches existed
                self._db.execute("ALTER TABLE deliveries ADD COLUMN batch_key TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so concurrent writers queue, never deadlock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- outbox ------------------------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewDelivery]) -> EnqueueResult:
        """Queue every item not seen before, in one durable transaction (returns after the commit)."""
        result = EnqueueResult()
        with self._tx() as db:
            for item in items:
                _insert(db, item, result, time.time())
        return result

    def due(self, receiver: str, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Delivery]:
        """Pending deliveries of a receiver, oldest first, skipping ``exclude`` (in flight) and resolved
        messages whose firing message is still on its way."""
        rows = self._query(
            f"""SELECT {_DELIVERY_COLUMNS} FROM deliveries d
                WHERE d.state = 'pending' AND d.receiver = ?
                  AND NOT (d.alert_status = 'resolved' AND EXISTS (
                      SELECT 1 FROM deliveries f WHERE f.story_key = d.story_key AND f.alert_status = 'firing'
                        AND f.state IN ('pending', 'resending')))
                ORDER BY d.id LIMIT ?""",
            (receiver, limit + len(exclude)),
        )
        return [Delivery(**dict(row)) for row in rows if row["id"] not in exclude][:limit]

    def get(self, ids: Sequence[int]) -> list[Delivery]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id IN ({marks}) ORDER BY id", ids)
        return [Delivery(**dict(row)) for row in rows]

    def find(self, fingerprint: str | None = None, receiver: str | None = None) -> list[Delivery]:
        """Deliveries of one alert and/or receiver (what tests and the CLI look at)."""
        where, params = ["1 = 1"], []
        if fingerprint:
            where.append("fingerprint = ?")
            params.append(fingerprint)
        if receiver:
            where.append("receiver = ?")
            params.append(receiver)
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)} ORDER BY id", params
        )
        return [Delivery(**dict(row)) for row in rows]

    def record_attempt(
        self,
        delivery_id: int,
        attempt: int,
        outcome: Outcome,
        *,
        status: int | None,
        error: str = "",
        latency_ms: float = 0.0,
        reason: str | None = None,
    ) -> None:
        """Log one attempt and move its delivery on: delivered, still pending (retry) or dead (with ``reason``)."""
        now = time.time()
        state = {"delivered": DELIVERED, "retry": None, "dead_letter": DEAD}[outcome]
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempts (delivery_id, at, attempt, outcome, status, error, latency_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (delivery_id, now, attempt, outcome, status, error, latency_ms),
            )
            db.execute(
                """UPDATE deliveries SET attempts = MAX(attempts, ?), updated_at = ?, last_status = ?,
                       last_error = CASE WHEN ? = '' THEN last_error ELSE ? END,
                       state = COALESCE(?, state),
                       delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END,
                       reason = CASE WHEN ? = 'dead_letter' THEN ? ELSE reason END
                   WHERE id = ?""",
                (attempt, now, status, error, error, state, outcome, now, outcome, reason, delivery_id),
            )

    # -- dead letters ------------------------------------------------------------------------------
    def dead_letters(self, limit: int = 100, receiver: str | None = None) -> list[Delivery]:
        """Dead (and interrupted in-process resends), newest first."""
        params: list[Any] = [DEAD, RESENDING]
        extra = ""
        if receiver:
            extra, params = " AND receiver = ?", [*params, receiver]
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE state IN (?, ?){extra} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [Delivery(**dict(row)) for row in rows]

    def resend(self, ids: Sequence[int] | None, *, in_process: bool = False) -> list[int]:
        """Move dead letters (``ids``, or all when None) back to the outbox with a fresh attempt budget.

        ``in_process``: mark them ``resending`` instead of ``pending``, so a running relay leaves them to the
        caller that delivers them now. Returns the ids moved (unknown or not-dead ids are skipped)."""
        now = time.time()
        with self._tx() as db:
            if ids is None:
                rows = db.execute("SELECT id FROM deliveries WHERE state IN (?, ?) ORDER BY id", (DEAD, RESENDING))
            else:
                marks = ",".join("?" * len(ids))
                rows = db.execute(
                    f"SELECT id FROM deliveries WHERE state IN (?, ?) AND id IN ({marks}) ORDER BY id",
                    (DEAD, RESENDING, *ids),
                )
            moved = [int(row["id"]) for row in rows.fetchall()]
            db.executemany(
                "UPDATE deliveries SET state = ?, attempts = 0, reason = NULL, updated_at = ? WHERE id = ?",
                [(RESENDING if in_process else PENDING, now, delivery_id) for delivery_id in moved],
            )
        return moved

    # -- agent diagnoses (alerting/diagnoses.py) ------------------------------------------
    def save_diagnoses(self, diagnoses: Sequence[Diagnosis], margin_s: float) -> int:
        """Keep the newest diagnosis per (machine, episode); a final one is never replaced by a preliminary
        one that arrives late. Alerts starting within ``margin_s`` of the episode belong to it. Returns rows
        written."""
        now, written = time.time(), 0
        margin_ms = int(margin_s * 1000)
        with self._tx() as db:
            for d in diagnoses:
                cursor = db.execute(
                    """INSERT INTO diagnoses (equipment_id, episode_id, first_at, last_at, closed, fault_type,
                           diagnosis_json, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (equipment_id, episode_id) DO UPDATE SET first_at = excluded.first_at,
                           last_at = excluded.last_at, closed = excluded.closed, fault_type = excluded.fault_type,
                           diagnosis_json = excluded.diagnosis_json, updated_at = excluded.updated_at
                       WHERE NOT (diagnoses.closed = 1 AND excluded.closed = 0)""",
                    (
                        d.equipment_id,
                        d.episode_id,
                        iso_ms(d.start_ms - margin_ms),
                        iso_ms(d.end_ms + margin_ms),
                        int(d.closed),
                        d.fault_type,
                        orjson.dumps(dataclasses.asdict(d)).decode(),
                        now,
                    ),
                )
                written += cursor.rowcount
        return written

    def diagnoses_for(self, alerts: Sequence[Alert]) -> dict[str, Diagnosis]:
        """The newest diagnosis of the episode each firing alert belongs to, by alert fingerprint."""
        found: dict[str, Diagnosis] = {}
        for alert in alerts:
            machine = alert.label("equipment_id")
            if alert.status != "firing" or not machine or alert.label("alertname") == FOLLOW_UP_ALERTNAME:
                continue
            rows = self._query(
                """SELECT diagnosis_json FROM diagnoses WHERE equipment_id = ? AND first_at <= ? AND last_at >= ?
                   ORDER BY updated_at DESC LIMIT 1""",
                (machine, starts_at_key(alert), starts_at_key(alert)),
            )
            if rows:
                found[alert.fingerprint] = _diagnosis(rows[0])
        return found

    def mark_told(self, receiver: str, recipient: str, diagnoses: Sequence[Diagnosis]) -> None:
        """Record that ``recipient`` was given these diagnoses (no follow-up repeats them)."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO told VALUES (?, ?, ?, ?, ?, ?)",
                [(receiver, recipient, d.equipment_id, d.episode_id, d.fault_type, now) for d in diagnoses],
            )

    def follow_ups(self, window_s: float = FOLLOW_UP_WINDOW_S) -> list[FollowUp]:
        """Recipients delivered a firing alert of a diagnosed episode who have not read its diagnosis."""
        rows = self._query(
            """SELECT DISTINCT d.receiver, d.recipient, d.address, d.external_url, g.diagnosis_json
               FROM diagnoses g JOIN deliveries d
                 ON d.equipment_id = g.equipment_id AND d.starts_at BETWEEN g.first_at AND g.last_at
               WHERE g.updated_at >= ? AND d.alert_status = 'firing' AND d.state = 'delivered'
                 AND d.alertname != ?
                 AND NOT EXISTS (SELECT 1 FROM told t WHERE t.receiver = d.receiver AND t.recipient = d.recipient
                     AND t.equipment_id = g.equipment_id AND t.episode_id = g.episode_id
                     AND t.fault_type = g.fault_type)
               ORDER BY g.updated_at, d.receiver, d.recipient""",
            (time.time() - window_s, FOLLOW_UP_ALERTNAME),
        )
        return [FollowUp(r["receiver"], r["recipient"], r["address"], r["external_url"], _diagnosis(r)) for r in rows]

    def enqueue_follow_ups(self, items: Sequence[tuple[FollowUp, NewDelivery]]) -> EnqueueResult:
        """Queue follow-up messages and mark their diagnoses told, in one transaction."""
        result, now = EnqueueResult(), time.time()
        with self._tx() as db:
            for follow, item in items:
                _insert(db, item, result, now)
                d = follow.diagnosis
                db.execute(
                    "INSERT OR IGNORE INTO told VALUES (?, ?, ?, ?, ?, ?)",
                    (follow.receiver, follow.recipient, d.equipment_id, d.episode_id, d.fault_type, now),
                )
        return result

    # -- Slack threads (alerting.threads) ------------------------------------------------------------
    def slack_threads(self, recipient: str, machines: Sequence[str]) -> dict[str, SlackThread]:
        """The newest thread of each of ``machines`` for ``recipient`` (machines without one are absent)."""
        if not machines:
            return {}
        marks = ",".join("?" * len(machines))
        rows = self._query(
            f"""SELECT equipment_id, channel, ts, severity, last_at FROM slack_threads
                WHERE recipient = ? AND equipment_id IN ({marks})""",
            [recipient, *machines],
        )
        return {r["equipment_id"]: SlackThread(r["channel"], r["ts"], r["severity"], r["last_at"]) for r in rows}

    def open_slack_thread(self, recipient: str, machines: Sequence[str], channel: str, ts: str, severity: str) -> None:
        """A new message opened the thread of these machines (replacing their older threads)."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO slack_threads VALUES (?, ?, ?, ?, ?, ?)",
                [(recipient, m, channel, ts, severity, now) for m in machines],
            )

    def touch_slack_thread(self, recipient: str, thread: SlackThread, severity: str) -> None:
        """A reply went into ``thread``: its last message is now, its severity the worse of the two."""
        worst = max(thread.severity, severity, key=severity_rank)
        with self._tx() as db:
            db.execute(
                "UPDATE slack_threads SET last_at = ?, severity = ? WHERE recipient = ? AND channel = ? AND ts = ?",
                (time.time(), worst, recipient, thread.channel, thread.ts),
            )

    # -- figures -----------------------------------------------------------------------------------
    def queue_depth(self) -> dict[str, int]:
        """Deliveries not yet finished (pending or being resent), per receiver."""
        rows = self._query(
            "SELECT receiver, COUNT(*) AS n FROM deliveries WHERE state IN (?, ?) GROUP BY receiver",
            (PENDING, RESENDING),
        )
        return {row["receiver"]: int(row["n"]) for row in rows}

    def dead_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM deliveries WHERE state = ?", (DEAD,))[0][0])

    # -- attempt log -------------------------------------------------------------------------------
    def recent_attempts(self, limit: int = 50, receiver: str | None = None) -> list[AttemptRecord]:
        params: list[Any] = []
        where = ""
        if receiver:
            where, params = " WHERE d.receiver = ?", [receiver]
        rows = self._query(f"{_ATTEMPT_SELECT}{where} ORDER BY a.id DESC LIMIT ?", [*params, limit])
        return [AttemptRecord(**dict(row)) for row in rows]

    def unshipped_attempts(self, limit: int) -> list[AttemptRecord]:
        rows = self._query(f"{_ATTEMPT_SELECT} WHERE a.shipped = 0 ORDER BY a.id LIMIT ?", (limit,))
        return [AttemptRecord(**dict(row)) for row in rows]

    def mark_shipped(self, ids: Sequence[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE attempts SET shipped = 1 WHERE id = ?", [(i,) for i in ids])

    def prune(self, keep_days: float = KEEP_DAYS) -> int:
        """Forget delivered messages older than ``keep_days`` whose attempts reached ClickHouse."""
        cutoff = time.time() - keep_days * 86400
        with self._tx() as db:
            cursor = db.execute(
                """DELETE FROM deliveries WHERE state = ? AND updated_at < ?
                   AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = deliveries.id AND a.shipped = 0)""",
                (DELIVERED, cutoff),
            )
            db.execute("DELETE FROM diagnoses WHERE updated_at < ?", (cutoff,))
            db.execute("DELETE FROM told WHERE at < ?", (cutoff,))
            db.execute("DELETE FROM slack_threads WHERE last_at < ?", (cutoff,))
            return cursor.rowcount
