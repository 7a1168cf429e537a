"""A dead letter keeps why, and the payload: whole when small, its first 256 KiB with size and hash when not."""

from __future__ import annotations

import base64
import hashlib

import orjson

from connectors.kafka import DEAD_LETTER_PAYLOAD_MAX, dead_letter_value


def test_small_payloads_are_kept_whole() -> None:
    record = orjson.loads(dead_letter_value("edge", "nan_or_inf", "value[3] is NaN", "pump-1", b"\x01\x02"))
    assert record["reason"] == "nan_or_inf" and base64.b64decode(record["payload_b64"]) == b"\x01\x02"
    assert "payload_truncated" not in record


def test_a_huge_payload_is_cut_with_its_size_and_hash() -> None:
    payload = bytes(range(256)) * (DEAD_LETTER_PAYLOAD_MAX // 256 * 3)
    record = orjson.loads(dead_letter_value("edge", "oversized_batch", "too big", "pump-1", payload))
    kept = base64.b64decode(record["payload_b64"])
    assert kept == payload[:DEAD_LETTER_PAYLOAD_MAX]
    assert record["payload_truncated"] is True and record["payload_size"] == len(payload)
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
