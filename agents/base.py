"""What every agent is: an :class:`Agent` reads anomaly episodes and writes insights (agents.records).

An agent is one module with one :class:`Agent` subclass (diagnostic, root cause, maintenance, and any a
plant installs). A module of this package declares its agent with :func:`register` and says how it is built
from the settings in :meth:`Agent.from_settings`; agents.registry finds every such module, so a built-in agent
is one file and nothing else. Agents see a batch of episodes at once, so an agent that relates
machines to each other (shared upstream causes) and one that looks at a single machine share one shape,
and per-episode work can be vectorised over the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import pandas as pd

from agents.features import sensor_features
from agents.records import SEVERITIES, STAT_COLUMNS, Episode, Insight
from vigil.settings import Settings

__all__ = ["SEVERITIES", "STAT_COLUMNS", "Agent", "AgentContext", "Episode", "Insight", "declared", "register"]


@dataclass
class AgentContext:
    """What agents share in one run: the insights of the agents that ran before (the maintenance agent
    plans from the diagnosis) and per-run options."""

    insights: list[Insight] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    _features: tuple[tuple[str, ...], pd.DataFrame] | None = field(default=None, repr=False)

    def sensor_features(self, episodes: Sequence[Episode]) -> pd.DataFrame:
        """agents.features.sensor_features of this batch, computed once for all the agents of a run."""
        key = tuple(e.episode_id for e in episodes)
        if self._features is None or self._features[0] != key:
            self._features = (key, sensor_features(episodes))
        return self._features[1]

    def of(self, kind: str, episode_id: str) -> Insight | None:
        """The latest insight of ``kind`` about an episode, if an earlier agent made one."""
        for insight in reversed(self.insights):
            if insight.kind == kind and insight.episode_id == episode_id:
                return insight
        return None


class Agent(ABC):
    """An analysis over anomaly episodes. Subclasses set ``name`` and implement :meth:`analyse`.

    ``order`` places it in a run (lower first): built-ins use 10 (diagnostic), 20 (root cause),
    30 (maintenance); a custom agent reading their insights should use more than 30."""

    name: ClassVar[str]
    order: ClassVar[int] = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """How a run builds the agent: with no arguments, unless the agent overrides this to take what it
        needs (the model registry, the rules, ...) from ``settings``."""
        return cls()

    @abstractmethod
    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        """Insights about ``episodes`` (any number per episode, none is fine)."""


_DECLARED: dict[str, type[Agent]] = {}
A = TypeVar("A", bound=type[Agent])


def register(cls: A) -> A:
    """Class decorator: declare a built-in agent (its ``name`` class attribute names it in every insight)."""
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"{getattr(cls, '__name__', cls)!r}: an agent subclasses agents.base.Agent")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.isidentifier() or not name.islower():
        raise ValueError(f"{cls.__name__}: name must be a lower-case identifier, got {name!r}")
    known = _DECLARED.get(name)
    if known is not None and known.__module__ != cls.__module__:  # a reloaded module may re-declare
        raise ValueError(f"agent {name!r} declared twice ({known.__module__} and {cls.__module__})")
    _DECLARED[name] = cls
    return cls


def declared() -> dict[str, type[Agent]]:
    """The agents declared so far (agents.registry.builtin_agents imports every module first)."""
    return dict(_DECLARED)
