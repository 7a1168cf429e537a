"""Every delivery attempt's outcome into ClickHouse (``settings.clickhouse.deliveries_table``), in batches.

Attempts are first written to the relay's SQLite store (in the same transaction that moves the delivery on),
then shipped from there: ClickHouse being down never slows or stops a delivery, nothing is lost while it is
down (the rows wait in SQLite and ship when it is back), and the relay logs one warning per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from alerting.store import AttemptRecord, Store
from connectors.clickhouse import ClickHouseUnavailable, make_client, require_tables
from vigil.settings import Settings

log = logging.getLogger(__name__)

BATCH_ROWS = 5_000
# While ClickHouse is down, reconnect after 1, 2, 4 ... at most 60 s (each try logs in the client library).
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0
COLUMNS = (
    "time",
    "receiver",
    "recipient",
    "fingerprint",
    "alertname",
    "equipment_id",
    "site",
    "severity",
    "alert_status",
    "status",
    "attempt",
    "http_status",
    "error",
    "latency_ms",
    "delivery_id",
)


def to_row(record: AttemptRecord) -> list[object]:
    return [
        datetime.fromtimestamp(record.at, tz=UTC),
        record.receiver,
        record.recipient,
        record.fingerprint,
        record.alertname,
        record.equipment_id,
        record.site,
        record.severity,
        record.alert_status,
        record.outcome,
        record.attempt,
        record.status or 0,
        record.error,
        record.latency_ms,
        record.delivery_id,
    ]


class DeliveryLog:
    """Ships unshipped attempts from the store to ClickHouse; call :meth:`flush` periodically (not thread-hot)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.table = f"{settings.clickhouse.database}.{settings.clickhouse.deliveries_table}"
        self._client: Client | None = None
        self._down = False  # an outage is being reported (warn once, info when it ends)
        self._retry_at = 0.0
        self._backoff_s = RETRY_MIN_S
        self._lock = threading.Lock()
        self.rows_shipped = 0

    def _connect(self) -> Client:
        if self._client is None:
            # The relay's identity may only insert here; the table comes with the schema (`vigil stack up`).
            client = make_client(self.settings.clickhouse, "relay")
            require_tables(client, self.settings.clickhouse, [self.settings.clickhouse.deliveries_table])
            self._client = client
        return self._client

    def flush(self) -> int:
        """Ship every waiting attempt (in batches); returns rows shipped. Never raises for ClickHouse trouble."""
        shipped = 0
        with self._lock:
            if self._down and time.monotonic() < self._retry_at:
                return 0
            while True:
                records = self.store.unshipped_attempts(BATCH_ROWS)
                try:
                    client = self._connect()  # also when idle: the table exists from the relay's start
                    if not records:
                        break
                    client.insert(self.table, [to_row(r) for r in records], column_names=COLUMNS)
                except (ClickHouseUnavailable, ClickHouseError, OSError) as exc:
                    self._outage(exc, len(records))
                    break
                self.store.mark_shipped([r.id for r in records])
                shipped += len(records)
                if len(records) < BATCH_ROWS:
                    break
            if self._client is not None and self._down:
                log.info("ClickHouse delivery log is back: shipped %d waiting attempt rows", shipped)
                self._down, self._backoff_s = False, RETRY_MIN_S
            self.rows_shipped += shipped
        return shipped

    @property
    def down(self) -> bool:
        """True while an outage is being reported (attempt rows wait in SQLite)."""
        return self._down

    def _outage(self, exc: Exception, waiting: int) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, RETRY_MAX_S)
        if not self._down:
            log.warning(
                "ClickHouse delivery log unavailable (%s); deliveries go on, %d+ attempt rows wait in %s and "
                "ship when %s:%d answers again",
                exc,
                waiting,
                self.store.path,
                self.settings.clickhouse.host,
                self.settings.clickhouse.port,
            )
            self._down = True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
