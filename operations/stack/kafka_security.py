"""Who may do what on the local Kafka broker: one SCRAM principal per component, ACLs for exactly its topics.

The broker denies whatever no ACL allows (``allow.everyone.if.no.acl.found=false``); ``admin`` (topics, users,
ACLs; the tools) and ``broker`` (its own inter-broker traffic) are super users. Every other component gets READ
or WRITE on the topics its code reads or writes, READ on its consumer groups and, for the Flink jobs, their
transactional ids (the exactly-once sinks' prefixes start with the job's group). A cluster of your own takes
the same list: :func:`acl_bindings` is what to grant there.

Passwords are random, one 0600 file per identity under ``kafka.secrets_dir`` (0700); the broker learns them at
format time (``kafka-storage format --add-scram``, so inter-broker SCRAM works from the first start) and again
from :func:`apply` at every start, so replacing a file and restarting the stack rotates that password.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from connectors.kafka import topic_names
from edge.service import EDGE_RECOVERY_GROUP
from jobs.kafka_lag import consumer_groups
from vigil.settings import KAFKA_IDENTITIES, Settings

SUPER_IDENTITIES = ("admin", "broker")
SCRAM_ITERATIONS = 8192
_MECHANISMS = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}


def ensure_passwords(settings: Settings) -> list[Path]:
    """A random password file for every identity that has none; returns the files created."""
    kafka = settings.kafka
    made = []
    for identity in KAFKA_IDENTITIES:
        path = kafka.password_file(identity)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        made.append(path)
    return made


def credentials(settings: Settings) -> dict[str, str]:
    kafka = settings.kafka
    return {kafka.principals[i]: kafka.as_identity(i).credentials()[1] for i in KAFKA_IDENTITIES}


def super_users(settings: Settings) -> list[str]:
    return [settings.kafka.principals[i] for i in SUPER_IDENTITIES]


def scram_format_args(settings: Settings) -> list[str]:
    """``kafka-storage format`` arguments that create every principal's SCRAM credential in the new log."""
    mechanism = settings.kafka.sasl_mechanism
    args: list[str] = []
    for user, password in credentials(settings).items():
        args += ["--add-scram", f"{mechanism}=[name={user},password={password},iterations={SCRAM_ITERATIONS}]"]
    return args


def _grants(settings: Settings) -> dict[str, list[tuple[ResourceType, str, ResourcePatternType, AclOperation]]]:
    k = settings.kafka
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE

    def topics(op: AclOperation, *names: str) -> list:
        return [(topic, name, literal, o) for name in names for o in (op, describe)]

    def groups(*names: str, pattern: ResourcePatternType = literal) -> list:
        return [(group, name, pattern, read) for name in names]

    flink_groups = (settings.flink.consumer_group, settings.scoring.consumer_group, settings.agents.consumer_group)
    return {
        # Writes telemetry and dead letters; re-reads its own telemetry at start (high-water marks).
        "edge": [
            *topics(write, k.telemetry_topic, k.dead_letter_topic),
            *topics(read, k.telemetry_topic),
            *groups(EDGE_RECOVERY_GROUP),
        ],
        # Window statistics, scoring and agents: telemetry -> window stats -> anomalies -> insights.
        "flink": [
            *topics(read, k.telemetry_topic, k.window_stats_topic, k.anomalies_topic),
            *topics(write, k.window_stats_topic, k.anomalies_topic, k.insights_topic, k.dead_letter_topic),
            *groups(*flink_groups),
            *[(txn, name, prefixed, op) for name in flink_groups for op in (write, describe)],
        ],
        # ClickHouse and Pushgateway sinks: what they store, and the dead letters of what they cannot.
        "sinks": [
            *topics(read, k.window_stats_topic, k.anomalies_topic, k.insights_topic),
            *topics(write, k.dead_letter_topic),
            *groups(settings.clickhouse.sink_consumer_group, pattern=prefixed),
            *groups(settings.prometheus.sink_consumer_group),
        ],
        # Alert publisher (anomalies) and the relay (diagnoses for the message text).
        "alerting": [
            *topics(read, k.anomalies_topic, k.insights_topic),
            *groups(settings.alerting.publisher_consumer_group, settings.alerting.insights_consumer_group),
        ],
        # The lag exporter: committed offsets of every group, end offsets of every topic.
        "monitor": [
            *[(topic, name, literal, describe) for name in topic_names(k)],
            *[(group, name, literal, describe) for name in consumer_groups(settings)],
        ],
    }


def acl_bindings(settings: Settings) -> list[AclBinding]:
    """The ACLs of every non-super principal (allow, from any host)."""
    principals = settings.kafka.principals
    return [
        AclBinding(rtype, name, pattern, f"User:{principals[identity]}", "*", op, AclPermissionType.ALLOW)
        for identity, grants in _grants(settings).items()
        for rtype, name, pattern, op in dict.fromkeys(grants)  # reading and writing a topic both DESCRIBE it
    ]


def apply(settings: Settings, timeout: float = 30.0) -> None:
    """Upsert every principal's SCRAM credential (picks up a rotated password file) and create the ACLs."""
    kafka = settings.kafka
    if not kafka.uses_sasl:
        return
    admin = AdminClient(kafka.as_identity("admin").client_config())
    mechanism = _MECHANISMS[str(kafka.sasl_mechanism)]
    upserts = [
        UserScramCredentialUpsertion(user, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS), password.encode())
        for user, password in credentials(settings).items()
    ]
    try:
        for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
            future.result()
        for future in admin.create_acls(acl_bindings(settings), request_timeout=timeout).values():
            future.result()
    except KafkaException as exc:
        raise RuntimeError(
            f"could not set the Kafka principals and ACLs at {kafka.bootstrap_servers} as "
            f"{kafka.principals['admin']}: {exc}. Is this the broker `vigil stack up` started, with the password "
            f"files in {kafka.password_file('admin').parent}?"
        ) from exc
