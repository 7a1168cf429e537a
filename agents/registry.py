"""Which agents run: the built-ins plus any installed package's, discovered through Python entry points.

A plant adds a domain agent by installing a package that declares, in its pyproject.toml::

    [project.entry-points."vigil.agents"]
    compliance = "my_plant_agents.compliance:ComplianceAgent"

The class must subclass :class:`agents.base.Agent`; it is built with no arguments (settings come from its
own configuration). A broken plug-in is reported and left out; it never stops the built-in agents.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points

from agents.base import Agent, AgentContext, Episode, Insight

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "vigil.agents"


def discover(group: str = ENTRY_POINT_GROUP) -> tuple[list[Agent], list[str]]:
    """Installed plug-in agents, and one message per plug-in that could not be loaded."""
    agents, problems = [], []
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Agent)):
                raise TypeError(f"{ep.value} is not a subclass of agents.base.Agent")
            agents.append(cls())
        except Exception as exc:  # noqa: BLE001 - a plug-in may fail in any way; report it, run the rest
            problems.append(f"agent plug-in {ep.name!r} ({ep.value}) not loaded: {exc}")
            log.error(problems[-1])
    return agents, problems


def run_agents(agents: Iterable[Agent], episodes: Sequence[Episode]) -> list[Insight]:
    """Every agent over the episodes, in ``order``; later agents see earlier agents' insights."""
    context = AgentContext()
    for agent in sorted(agents, key=lambda a: (a.order, a.name)):
        try:
            context.insights.extend(agent.analyse(episodes, context))
        except Exception:  # noqa: BLE001 - one failing agent must not silence the others
            log.exception("agent %s failed on %d episodes", agent.name, len(episodes))
    return context.insights
