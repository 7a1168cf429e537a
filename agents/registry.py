"""Which agents run: every agent module of this package, plus the agents installed packages add.

A built-in agent is one module of ``agents/`` whose class carries :func:`agents.base.register` and, when it
needs more than its defaults, overrides :meth:`agents.base.Agent.from_settings`. :func:`builtin_agents`
imports every module of the package to find them, and the agents job (udfs/agents_udtf.py) and `vigil
evaluate --agents` all take their agents from :func:`build_agents`, so a new agent is its file and nothing else.

A plant adds a domain agent by installing a package that declares, in its pyproject.toml::

    [project.entry-points."vigil.agents"]
    compliance = "my_plant_agents.compliance:ComplianceAgent"

The class must subclass :class:`agents.base.Agent`; it is built with ``from_settings`` too (by default with no
arguments: settings come from its own configuration). Plug-ins run when ``settings.agents.plugins`` is on and
their entry-point name is in ``settings.agents.plugin_allowlist`` (loading one runs its code); a broken one is
reported and left out, it never stops the built-in agents. agents/compliance.py is the example
plug-in: it ships through this project's own entry point, so it does not register as a built-in.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterable, Sequence
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from agents.base import Agent, AgentContext, Episode, Insight, declared
from vigil.settings import Settings

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "vigil.agents"
PACKAGE = __name__.rpartition(".")[0]
_NOT_AGENTS = frozenset({"registry"})


def run_order(agent: Agent) -> tuple[int, str]:
    """Agents run by ``order``, then ``name``."""
    return agent.order, agent.name


@cache
def builtin_agents() -> dict[str, type[Agent]]:
    """name -> class of every agent the modules of this package declare now, in run order."""
    modules = {
        f"{PACKAGE}.{m.name}"
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name not in _NOT_AGENTS and not m.name.startswith("_")
    }
    for name in sorted(modules):
        importlib.import_module(name)
    # Only what is there now: a module removed since an earlier call no longer counts.
    found = {name: cls for name, cls in declared().items() if cls.__module__ in modules}
    return {name: found[name] for name in sorted(found, key=lambda n: (found[n].order, n))}


def discover(
    group: str = ENTRY_POINT_GROUP, settings: Settings | None = None, allowed: Iterable[str] | None = None
) -> tuple[list[Agent], list[str]]:
    """Installed plug-in agents whose entry-point name is in ``allowed`` (default: ``settings.agents.
    plugin_allowlist``, or every one without settings), built from ``settings`` if given, else with no arguments;
    and one message per plug-in that was not loaded. One not allowed is not even imported."""
    if allowed is None and settings is not None:
        allowed = settings.agents.plugin_allowlist
    names = None if allowed is None else set(allowed)
    found, problems = [], []
    for ep in entry_points(group=group):
        if names is not None and ep.name not in names:
            problems.append(
                f"agent plug-in {ep.name!r} ({ep.value}) is installed but not in agents.plugin_allowlist: not loaded"
            )
            log.warning(problems[-1])
            continue
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Agent)):
                raise TypeError(f"{ep.value} is not a subclass of agents.base.Agent")
            found.append(cls() if settings is None else cls.from_settings(settings))
        except Exception as exc:  # noqa: BLE001 - a plug-in may fail in any way; report it, run the rest
            problems.append(f"agent plug-in {ep.name!r} ({ep.value}) not loaded: {exc}")
            log.error(problems[-1])
    return found, problems


def build_agents(settings: Settings, plugins: bool | None = None) -> list[Agent]:
    """The built-in agents built from ``settings``, plus the plug-ins when ``plugins`` (default:
    ``settings.agents.plugins``), in run order. A plug-in that fails to load is logged and left out."""
    built: list[Agent] = [cls.from_settings(settings) for cls in builtin_agents().values()]
    if settings.agents.plugins if plugins is None else plugins:
        built += discover(settings=settings)[0]
    return sorted(built, key=run_order)


def run_agents(agents: Iterable[Agent], episodes: Sequence[Episode]) -> list[Insight]:
    """Every agent over the episodes, in ``order``; later agents see earlier agents' insights."""
    context = AgentContext()
    for agent in sorted(agents, key=run_order):
        try:
            context.insights.extend(agent.analyse(episodes, context))
        except Exception:  # noqa: BLE001 - one failing agent must not silence the others
            log.exception("agent %s failed on %d episodes", agent.name, len(episodes))
    return context.insights
