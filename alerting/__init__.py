"""Vigil's notification relay: Alertmanager webhooks -> Slack, SMS (Twilio-compatible) and e-mail.

Alertmanager posts to ``/alertmanager/<receiver>`` (``slack``, ``sms`` or ``email``: the URL path names the
channel); the on-call file (``settings.alerting.receivers_path``) names the recipients. Every (alert, status,
recipient) becomes one row of a durable SQLite outbox before the webhook is acknowledged, keyed so that
Alertmanager's re-sends never page anyone twice; workers deliver per receiver with retries, rate limits and
dead letters, and every attempt is logged to ClickHouse.

Modules: ``payload`` (webhook models), ``oncall`` (who gets what), ``messages`` (what they read),
``senders`` (how it travels), ``threads`` (which Slack thread a message goes to), ``retry`` (when to try
again), ``ratelimit``, ``store`` (outbox, idempotency, dead letters), ``delivery_log`` (ClickHouse),
``relay`` (the FastAPI server and its workers).
"""

from __future__ import annotations

# The channels the relay can deliver to; Alertmanager's receivers carry the same names.
RECEIVERS = ("slack", "sms", "email")
