"""Agent insights for the people an alert reached: the diagnosis in the alert's own text, or a follow-up.

The agents job (jobs/agents.py) writes insights to ``settings.kafka.insights_topic``: a preliminary analysis
at an episode's third anomalous window and the final one when it is over. The relay reads that topic
(group ``settings.alerting.insights_consumer_group``) and keeps the newest diagnosis per (machine, episode)
in its SQLite state (:class:`alerting.store.Store`), with the maintenance agent's recommended action:

- A message rendered after the diagnosis is known carries it (``diagnosis`` annotation, every channel).
- A recipient who was already sent an alert of that machine in that episode without it gets ONE follow-up
  message (severity ``update``) on the same receiver, address and rate limit; a later insight that changes
  the diagnosis (e.g. the final analysis disagrees with the preliminary one) sends one more. The same
  diagnosis confirmed by the final analysis sends nothing: nobody reads the same thing twice.

Why the relay: it is the one place that knows who was told what (its outbox), so a follow-up reaches exactly
the people paged, on the channel that paged them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from alerting.payload import Alert

FOLLOW_UP_ALERTNAME = "VigilDiagnosis"
FOLLOW_UP_SEVERITY = "update"
DIAGNOSTIC_AGENT = "diagnostic"
MAINTENANCE_AGENT = "maintenance"


@dataclass(frozen=True)
class Diagnosis:
    """What the agents said about one episode of one machine (the newest analysis of it)."""

    equipment_id: str
    episode_id: str
    site: str
    equipment_type: str
    start_ms: int
    end_ms: int
    closed: bool
    fault_type: str
    title: str  # the diagnostic agent's line, e.g. "Bearing wear (confidence 0.82) from vibration_rms"
    confidence: float
    sensors: tuple[str, ...] = ()
    action: str = ""  # the maintenance agent's line, when it came with the same analysis

    def text(self) -> str:
        """The line a message carries: the diagnosis, then the recommended action."""
        title = self.title.removeprefix("Preliminary: ")
        state = "" if self.closed else " (preliminary, episode still going on)"
        return f"{title}{state}" + (f". Action: {self.action}" if self.action else "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def maintenance_action(record: Mapping[str, Any]) -> str:
    """'act within 4 h; failure in ~6 h: <first recommended action>' from a maintenance insight record."""
    title = _text(record.get("title"))
    when = title.split(": ", 1)[1] if ": " in title else title
    raw = record.get("details") or "{}"
    try:  # the contract carries details as JSON text; tolerate an object too
        details = raw if isinstance(raw, dict) else orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        details = {}
    steps = details.get("actions") if isinstance(details, dict) else None
    first = steps[0] if isinstance(steps, list) and steps and isinstance(steps[0], str) else ""
    return f"{when}: {first}" if first else when


def parse_insights(values: Iterable[bytes]) -> tuple[list[Diagnosis], int]:
    """Diagnoses from raw insight records (diagnostic ones, with the maintenance action of the same analysis).

    Returns (diagnoses, records that were not readable insights). Other agents' insights are skipped:
    they go to the console, not to phones.
    """
    diagnostic: dict[tuple[str, str, bool], dict[str, Any]] = {}
    actions: dict[tuple[str, str, bool], str] = {}
    bad = 0
    for value in values:
        try:
            record = orjson.loads(value)
            key = (str(record["equipment_id"]), str(record["episode_id"]), bool(record.get("closed", True)))
            agent = record["agent"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            bad += 1
            continue
        if agent == DIAGNOSTIC_AGENT:
            diagnostic[key] = record
        elif agent == MAINTENANCE_AGENT and _text(record.get("title")):
            actions[key] = maintenance_action(record)
    out = []
    for key, r in diagnostic.items():
        try:
            out.append(
                Diagnosis(
                    equipment_id=key[0],
                    episode_id=key[1],
                    site=_text(r.get("site")),
                    equipment_type=_text(r.get("equipment_type")),
                    start_ms=int(r["window_start_ms"]),
                    end_ms=int(r["window_end_ms"]),
                    closed=key[2],
                    fault_type=_text(r.get("fault_type")),
                    title=_text(r.get("title")),
                    confidence=float(r.get("confidence") or 0.0),
                    sensors=tuple(s for s in (r.get("sensors") or ()) if isinstance(s, str)),
                    action=actions.get(key, ""),
                )
            )
        except (KeyError, TypeError, ValueError):
            bad += 1
    return out, bad


def iso_ms(ms: int) -> str:
    """Epoch milliseconds in the outbox's ``starts_at`` spelling (so SQLite compares them as text)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds")


def follow_up_alert(diagnosis: Diagnosis, console_url: str) -> Alert:
    """The follow-up as an alert the relay's outbox and renderers already handle.

    Its fingerprint is the (machine, episode, fault) triple: one follow-up per recipient per conclusion,
    however often the relay looks (the outbox's idempotency key does the rest)."""
    fingerprint = hashlib.sha256(
        "\x1f".join((diagnosis.equipment_id, diagnosis.episode_id, diagnosis.fault_type)).encode()
    ).hexdigest()[:16]
    labels = {
        "alertname": FOLLOW_UP_ALERTNAME,
        "severity": FOLLOW_UP_SEVERITY,
        "site": diagnosis.site,
        "equipment_id": diagnosis.equipment_id,
        "equipment_type": diagnosis.equipment_type,
        "detector": DIAGNOSTIC_AGENT,
    }
    state = "final analysis" if diagnosis.closed else "preliminary analysis, episode still going on"
    annotations = {
        "summary": diagnosis.title.removeprefix("Preliminary: "),
        "description": (f"Recommended: {diagnosis.action}. " if diagnosis.action else "") + f"Agents' {state}.",
        "console_url": f"{console_url.rstrip('/')}/?equipment={diagnosis.equipment_id}",
    }
    return Alert(
        status="firing",
        labels={k: v for k, v in labels.items() if v},
        annotations=annotations,
        startsAt=datetime.fromtimestamp(diagnosis.start_ms / 1000, UTC),
        fingerprint=fingerprint,
    )


def with_diagnoses(alerts: Sequence[Alert], found: Mapping[str, Diagnosis]) -> list[Alert]:
    """Alerts (by fingerprint in ``found``) with the diagnosis as their ``diagnosis`` annotation."""
    return [
        a.model_copy(update={"annotations": {**a.annotations, "diagnosis": found[a.fingerprint].text()}})
        if a.fingerprint in found and a.label("alertname") != FOLLOW_UP_ALERTNAME
        else a
        for a in alerts
    ]
