"""`vigil fuzz`: coverage-guided fuzzing (atheris, libFuzzer) of what takes input from outside.

Each target is an oracle over bytes: it feeds them where the outside world does and checks that the outcome is
one the code promises (a clear refusal, or a result that keeps its invariants). Anything else, an unexpected
exception included, is a crash that libFuzzer saves as a file to replay. Targets:

- ``edge``: a serialized ``ReadingBatch`` into the edge's decoding, validation and record building (what the
  gRPC handler runs before Kafka): malformed or invalid input must get one of the dead-letter reason codes and a
  message that says why; accepted input must come out as records that hold every sample once.
- ``webhook``: a body into the relay's webhook parsing, then every message renderer (Slack, SMS, e-mail, the
  grouped ones): a bad body gets an ``InvalidWebhook`` that says what is wrong; for a valid one every renderer
  works and no label or annotation reaches Slack as control syntax (``<!channel>``, a link).

Each target runs in a child process (libFuzzer owns the process) for a fixed time, from the regression corpus
in ``tests/fuzz_corpus/<target>`` plus the seeds below; the figures (executions, coverage, crashes) come from
libFuzzer's own output. ``tests/unit/test_fuzz_corpus.py`` replays the corpus through the same oracles.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import atheris
import orjson
from google.protobuf.message import DecodeError

from alerting.messages import (
    MessageContext,
    email_group_message,
    email_message,
    safe_link,
    slack_group_message,
    slack_message,
    sms_group_text,
    sms_text,
)
from alerting.payload import InvalidWebhook, WebhookPayload, parse_webhook
from edge.chunking import batch_to_records
from edge.proto import telemetry_pb2
from edge.validation import REASON_CODES, BatchValidator
from vigil.settings import PROJECT_ROOT, EdgeSettings

CORPUS_DIR = PROJECT_ROOT / "tests" / "fuzz_corpus"
# The oracles' clock: fixed, so that a corpus file means the same thing on every replay.
NOW_MS = 1_800_000_000_000
WINDOW_MS = 5_000
_EDGE = BatchValidator(EdgeSettings())
_CTX = MessageContext(console_url="https://console.example", external_url="https://alertmanager.example")


class OracleViolation(AssertionError):
    """The code did something it promises never to do with this input."""


def check_edge(data: bytes) -> str:
    """One input through decode -> validate -> records; returns the outcome ("accepted" or the reason code)."""
    try:
        batch = telemetry_pb2.ReadingBatch.FromString(data)
    except DecodeError:
        return "malformed_protobuf"  # the handler dead-letters it under this reason, with its bytes
    result = _EDGE.validate(batch, NOW_MS, NOW_MS, "fuzz-gateway")
    if not result.ok:
        if result.reason not in REASON_CODES or not result.detail:
            raise OracleViolation(f"rejection without a known reason and message: {result.reason!r} {result.detail!r}")
        return result.reason
    records = batch_to_records(batch, result.arrays, WINDOW_MS, NOW_MS)
    samples = 0
    for key, value in records:
        record = orjson.loads(value)
        if key.decode() != batch.equipment_id or record["equipment_id"] != batch.equipment_id:
            raise OracleViolation(f"record keyed {key!r} for machine {batch.equipment_id!r}")
        start = record["chunk_start_ms"]
        for sensor in record["sensors"]:
            if any(not start <= t < start + WINDOW_MS for t in sensor["ts"]) or len(sensor["v"]) != len(sensor["ts"]):
                raise OracleViolation(f"samples outside their window {start} or without values: {sensor}")
            samples += len(sensor["ts"])
    if samples != result.points:
        raise OracleViolation(f"{result.points} points accepted, {samples} written")
    return "accepted"


_LINK = re.compile(r"<([^|<>]*)\|([^<>]*)>")


def _texts(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [t for key, value in node.items() if key != "url" for t in _texts(value)]
    if isinstance(node, list):
        return [t for item in node for t in _texts(item)]
    return []


def _check_slack(message: dict, payload: WebhookPayload) -> None:
    """Every ``<`` in a Slack message is a link of ours: to the console, or an alert's own source query, with a
    label that is not empty; nothing else of Slack's control syntax (``<!channel>``, ``<@user>``, links)."""
    sources = {a.generatorURL for a in payload.alerts}

    def ours(match: re.Match[str]) -> str:
        url, label = match.groups()
        if label and ((url in sources and safe_link(url)) or safe_link(url, _CTX.console_url)):
            return ""
        return match.group(0)

    for text in _texts(message):
        if "<" in _LINK.sub(ours, text):
            raise OracleViolation(f"Slack control syntax from the input reached a message: {text[:300]!r}")


def check_webhook(data: bytes) -> str:
    """One body through the webhook's parsing and every renderer; returns "accepted" or "invalid"."""
    try:
        payload = parse_webhook(data)
    except InvalidWebhook as exc:
        if not str(exc):
            raise OracleViolation("a refusal without a message") from exc
        return "invalid"
    for alert in payload.alerts:
        _check_slack(slack_message(alert, _CTX), payload)
        sms_text(alert, _CTX)
        email_message(alert, _CTX, "vigil@example.com", "oncall@example.com", "story")
    _check_slack(slack_group_message(list(payload.alerts), _CTX), payload)
    sms_group_text(list(payload.alerts), _CTX)
    keys = [f"story-{i}" for i in range(len(payload.alerts))]
    email_group_message(list(payload.alerts), _CTX, "vigil@example.com", "oncall@example.com", keys)
    return "accepted"


def _edge_seeds() -> list[bytes]:
    batch = telemetry_pb2.ReadingBatch(
        equipment_id="pump-001", site="site-a", equipment_type="pump", gateway_id="gw", sequence=7, sent_at_ms=NOW_MS
    )
    for s in range(3):
        series = batch.sensors.add(sensor=f"sensor_{s}", unit="bar")
        series.timestamps_ms.extend(NOW_MS - 9_500 + 500 * i for i in range(20))
        series.values.extend(s * 10 + i * 0.5 for i in range(20))
    single = telemetry_pb2.ReadingBatch(equipment_id="fan-9", sequence=1)
    single.sensors.add(sensor="rpm", unit="1/min", timestamps_ms=[NOW_MS - 100], values=[1480.0])
    return [batch.SerializeToString(), single.SerializeToString(), b""]


def _webhook_seeds() -> list[bytes]:
    alert = {
        "status": "firing",
        "labels": {"alertname": "VigilAnomaly", "severity": "critical", "site": "site-a", "equipment_id": "pump-1"},
        "annotations": {"summary": "pump-1 vibration", "description": "3 sensors", "console_url": "https://x/"},
        "startsAt": datetime.fromtimestamp(NOW_MS / 1000, UTC).isoformat(),
        "generatorURL": "https://prometheus.example/graph?g0.expr=up",
        "fingerprint": "abc123",
    }
    resolved = alert | {"status": "resolved", "endsAt": datetime.fromtimestamp(NOW_MS / 1000 + 90, UTC).isoformat()}
    body = {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "slack", "alerts": [alert, resolved]}
    return [orjson.dumps(body), orjson.dumps(body | {"alerts": []}), b"{}"]


@dataclass(frozen=True)
class Target:
    check: Callable[[bytes], str]
    seeds: Callable[[], list[bytes]]
    max_len: int


TARGETS: dict[str, Target] = {
    "edge": Target(check_edge, _edge_seeds, 64 * 1024),
    "webhook": Target(check_webhook, _webhook_seeds, 16 * 1024),
}


@dataclass(frozen=True)
class FuzzResult:
    target: str
    seconds: float
    executions: int
    coverage: int  # libFuzzer's covered edges at the end
    corpus: int  # inputs it kept as new coverage
    crashes: list[Path]
    exit_code: int
    log: Path


def corpus_dir(target: str) -> Path:
    return CORPUS_DIR / target


def run_target(target: str, seconds: float, work_dir: Path) -> FuzzResult:
    """Fuzz one target in a child process for ``seconds``; crash inputs land in ``work_dir``."""
    spec = TARGETS[target]
    work_dir.mkdir(parents=True, exist_ok=True)
    live = work_dir / f"{target}-corpus"  # what libFuzzer adds; the regression corpus stays as committed
    live.mkdir(exist_ok=True)
    seeds = work_dir / f"{target}-seeds"
    seeds.mkdir(exist_ok=True)
    for i, seed in enumerate(spec.seeds()):
        (seeds / f"seed-{i}").write_bytes(seed)
    log = work_dir / f"{target}.log"
    argv = [
        sys.executable,
        "-m",
        "operations.fuzz",
        target,
        f"-max_total_time={int(seconds)}",
        f"-max_len={spec.max_len}",
        f"-artifact_prefix={work_dir}/{target}-",
        "-print_final_stats=1",
        str(live),
        str(seeds),
    ]
    if corpus_dir(target).is_dir():
        argv.append(str(corpus_dir(target)))
    with log.open("wb") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT).returncode
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    cov = re.findall(r"\bcov: (\d+)", text)
    kept = re.findall(r"\bcorp: (\d+)/", text)
    crashes = sorted(work_dir.glob(f"{target}-crash-*")) + sorted(work_dir.glob(f"{target}-timeout-*"))
    return FuzzResult(
        target,
        seconds,
        int(runs[-1]) if runs else 0,
        int(cov[-1]) if cov else 0,
        int(kept[-1]) if kept else 0,
        crashes,
        code,
        log,
    )


def default_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vigil-fuzz-"))


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """The child: atheris drives the oracle, instrumented for coverage, until libFuzzer's limits end it."""
    check = TARGETS[target].check

    def one(data: bytes) -> None:
        check(data)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2:])
