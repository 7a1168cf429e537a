"""The fuzzing regression corpus (tests/fuzz_corpus, inputs `vigil fuzz` found or started from) replayed through
the same oracles: every input gets a clear refusal or a result that keeps its invariants."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from alerting.payload import parse_webhook
from edge.validation import REASON_CODES
from operations.fuzz import CORPUS_DIR, TARGETS, OracleViolation, _check_slack

CASES = [(target, path) for target in TARGETS for path in sorted((CORPUS_DIR / target).glob("*"))]


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_the_corpus_keeps_its_promises(target: str, path: Path) -> None:
    outcome = TARGETS[target].check(path.read_bytes())
    assert outcome in {"accepted", "invalid", *REASON_CODES}


def test_every_target_has_a_corpus_and_seeds() -> None:
    for name, target in TARGETS.items():
        assert list((CORPUS_DIR / name).glob("*")), f"tests/fuzz_corpus/{name} is empty"
        outcomes = {target.check(seed) for seed in target.seeds()}
        assert "accepted" in outcomes and len(outcomes) > 1  # the seeds reach both sides of the oracle


def test_the_slack_oracle_catches_injected_control_syntax() -> None:
    body = TARGETS["webhook"].seeds()[0]
    payload = parse_webhook(body)
    for injected in ("<!channel>", "<@U123>", "<https://evil.example|Open console>", "<https://console.example|>"):
        with pytest.raises(OracleViolation):
            _check_slack({"blocks": [{"text": {"text": f"- {injected}"}}]}, payload)
    _check_slack({"blocks": [{"text": {"text": "<https://console.example/?equipment=p|p> &lt;!channel&gt;"}}]}, payload)
    assert orjson.loads(body)["alerts"]
