"""RUN_AGENTS: the agents as a Flink table function, one call per anomaly episode (closed, or open: preliminary).

Per-episode Python is right here (unlike per-record scoring): episodes are rare next to windows -- a
machine has one every few hours at worst -- and each call does real work: two ClickHouse reads
(agents.episode_store) and every agent. Built once per Python worker in ``open``: the ClickHouse client and
the agents of agents.registry.build_agents (the built-in ones -- the diagnostic model is re-read from the
registry when a new version is promoted -- and any plug-ins).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
from pyflink.table import DataTypes, Row
from pyflink.table.udf import FunctionContext, TableFunction, udtf
from tenacity import Retrying, stop_after_delay, wait_exponential

from agents.base import Episode
from agents.episode_store import EpisodeStore
from agents.registry import build_agents, run_agents
from agents.root_cause import RootCauseAgent
from connectors.clickhouse import make_client
from vigil.settings import Settings

log = logging.getLogger(__name__)

NAME = "RUN_AGENTS"
READ_RETRY_S = 60.0
RESULT_FIELDS = (
    ("equipment_id", DataTypes.STRING()),
    ("agent", DataTypes.STRING()),
    ("kind", DataTypes.STRING()),
    ("episode_id", DataTypes.STRING()),
    ("title", DataTypes.STRING()),
    ("severity", DataTypes.STRING()),
    ("confidence", DataTypes.DOUBLE()),
    ("fault_type", DataTypes.STRING()),
    ("sensors", DataTypes.ARRAY(DataTypes.STRING())),
    ("details", DataTypes.STRING()),
)


class RunAgents(TableFunction):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = None
        self.agents: list = []

    def open(self, function_context: FunctionContext) -> None:

        self.store = EpisodeStore(self.settings, make_client(self.settings.clickhouse, "agents"))
        self.agents = build_agents(self.settings)

    def eval(
        self, equipment_id: str, site: str, equipment_type: str, start_ms: int, end_ms: int, closed: bool
    ) -> Iterator[Row]:

        episode = self._read(equipment_id, site, equipment_type, int(start_ms), int(end_ms), bool(closed))
        insights = run_agents(self.agents, [episode])
        if episode.closed:
            insights += self._shared_cause(episode, insights)
        for insight in insights:
            yield Row(
                insight.equipment_id,
                insight.agent,
                insight.kind,
                insight.episode_id,
                insight.title,
                insight.severity,
                float(insight.confidence),
                insight.fault_type,
                list(insight.sensors),
                orjson.dumps(insight.details, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode(),
            )

    def _shared_cause(self, episode: Episode, insights: list) -> list:
        """One shared-cause insight when machines of the episode's site (and line) went wrong with it, led by
        the same kind of sensor (agents.root_cause.RootCauseAgent.shared_cause_with); a failed read only
        costs this insight, never the episode's own ones."""

        agent = next((a for a in self.agents if isinstance(a, RootCauseAgent)), None)
        ranked = next((i for i in insights if i.kind == "root_cause" and i.episode_id == episode.episode_id), None)
        if agent is None or ranked is None or not ranked.sensors or self.store is None:
            return []
        try:
            neighbours = self.store.neighbours(
                episode.equipment_id,
                episode.site,
                episode.start_ms,
                agent.shared_window_ms,
                self.settings.agents.gap_windows,
            )
        except Exception as exc:  # noqa: BLE001 -- ClickHouse trouble: the episode's insights still go out
            log.warning("agents: shared-cause lookup for %s failed: %s", episode.episode_id, exc)
            return []
        lines = {m: self.store.line_of(m) for m in neighbours["equipment_id"]}
        found = agent.shared_cause_with(episode, ranked.sensors[0], neighbours, lines)
        return [found] if found is not None else []

    def _read(
        self, equipment_id: str, site: str, equipment_type: str, start_ms: int, end_ms: int, closed: bool
    ) -> Episode:
        """The episode's evidence, retried for up to READ_RETRY_S while ClickHouse is unreachable; after that the
        error fails the task, and Flink restarts the job from its last checkpoint: the episode is analysed
        again, never skipped."""
        for attempt in Retrying(
            stop=stop_after_delay(READ_RETRY_S),
            wait=wait_exponential(0.5, max=8),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "agents: reading episode %s@%s from ClickHouse failed (%s); retrying",
                equipment_id,
                start_ms,
                state.outcome.exception(),
            ),
        ):
            with attempt:
                assert self.store is not None, "open() builds the store"
                return self.store.episode(equipment_id, site, equipment_type, start_ms, end_ms, closed)
        raise AssertionError("unreachable")


def run_agents_udtf(settings: Settings):
    return udtf(RunAgents(settings), result_types=[t for _, t in RESULT_FIELDS])
