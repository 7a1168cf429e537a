"""A new agent is one file: dropped into agents/, it is built and run by agents.registry, with no other file of
the project edited.

The example agent below is written into the package for this module only (and removed afterwards); the
registry finds it because it is there, exactly as it finds the built-in ones.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import agents
from agents.base import Agent, register
from agents.registry import build_agents, builtin_agents, run_agents
from tests.unit.test_agents import episode, noisy, stats
from vigil.settings import Settings

NAME = "example_after_diagnosis"
EXAMPLE = '''"""Example: repeats each episode's diagnosis, to show it runs after the diagnostic agent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from agents.base import Agent, AgentContext, Episode, Insight, register
from vigil.settings import Settings


@register
class ExampleAfterDiagnosis(Agent):
    name = "example_after_diagnosis"
    order = 35

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.window.size_ms)

    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        out = []
        for e in episodes:
            diagnosis = context.of("diagnosis", e.episode_id)
            out.append(
                Insight(
                    agent=self.name,
                    kind="example",
                    equipment_id=e.equipment_id,
                    site=e.site,
                    episode_id=e.episode_id,
                    title=f"after {diagnosis.fault_type if diagnosis else 'nothing'}",
                    details={"window_ms": self.window_ms},
                )
            )
        return out
'''


def _forget_example() -> None:
    sys.modules.pop(f"agents.{NAME}", None)
    builtin_agents.cache_clear()


@pytest.fixture
def example_file() -> Iterator[Path]:
    path = Path(agents.__file__).parent / f"{NAME}.py"
    assert not path.exists(), f"{path} is left over from an interrupted run: delete it"
    path.write_text(EXAMPLE)
    _forget_example()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        _forget_example()


def test_the_built_in_agents_declare_themselves_in_run_order() -> None:
    assert list(builtin_agents()) == ["diagnostic", "root_cause", "maintenance"]
    assert [a.name for a in build_agents(Settings(), plugins=False)] == ["diagnostic", "root_cause", "maintenance"]
    # The example plug-in ships through the entry point, not as a built-in, and runs only when plug-ins are on.
    assert [a.name for a in build_agents(Settings(), plugins=True)][-1] == "compliance"
    off = Settings().model_copy(update={"agents": Settings().agents.model_copy(update={"plugins": False})})
    assert "compliance" not in [a.name for a in build_agents(off)]


def test_an_agent_file_is_built_and_run_with_no_other_file_edited(example_file: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    built = build_agents(settings, plugins=False)
    assert [a.name for a in built] == ["diagnostic", "root_cause", "maintenance", NAME]  # order 35
    assert built[-1].window_ms == settings.window.size_ms  # built through its own from_settings

    n, start = 30, 20
    e = episode(stats({"flow": noisy(n, 100, 1)}), start, n)
    insights = run_agents(built, [e])
    [mine] = [i for i in insights if i.agent == NAME]
    diagnosis = next(i for i in insights if i.kind == "diagnosis")
    assert mine.episode_id == e.episode_id and mine.title == f"after {diagnosis.fault_type}"
    assert [i.agent for i in insights].index(NAME) > [i.agent for i in insights].index("maintenance")

    example_file.rename(example_file.with_suffix(".off"))
    try:
        _forget_example()
        assert NAME not in builtin_agents()  # only the files that are there now
    finally:
        example_file.with_suffix(".off").rename(example_file)
        _forget_example()
    assert NAME in builtin_agents()


def test_register_refuses_what_is_not_an_agent() -> None:
    with pytest.raises(TypeError, match="subclasses"):
        register(int)  # type: ignore[arg-type]

    class Bad(Agent):
        name = "Not-An-Identifier"

        def analyse(self, episodes, context):  # noqa: ANN001, ANN202
            return []

    with pytest.raises(ValueError, match="lower-case identifier"):
        register(Bad)


def test_an_installed_plug_in_runs_only_when_allow_listed() -> None:
    none_allowed = Settings().model_copy(
        update={"agents": Settings().agents.model_copy(update={"plugin_allowlist": ()})}
    )
    assert "compliance" not in [a.name for a in build_agents(none_allowed, plugins=True)]
    assert "compliance" in [a.name for a in build_agents(Settings(), plugins=True)]  # allow-listed by default
