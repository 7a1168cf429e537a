"""Root-cause agent: which sensors explain an episode, in the order they went wrong, and whether several
machines' episodes share one upstream cause.

Per episode the sensors are ranked by how far they moved from their own baseline (mean shift, frozen
readings and silence count as decisive evidence), and listed again in order of onset: the sensor that left
its baseline first is the best lead. Across machines, episodes of the same site and line that start within
``shared_window_ms`` of each other and move the same kind of sensor are one event: the agent reports one
shared-cause insight for the group (one cause, one insight, not fifty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from agents.base import Agent, AgentContext, Episode, Insight, register
from agents.features import DEVIATING_Z, role_of

DECISIVE = 1e3  # a frozen or silent sensor outranks any shift


def rank_sensors(per_sensor: pd.DataFrame) -> pd.DataFrame:
    """The sensors of one episode, most explanatory first, with ``evidence`` and ``onset_ms``."""
    evidence = per_sensor["shift_z"].abs() + 2.0 * per_sensor["noise_ratio"].clip(lower=0)
    evidence = evidence + np.where(per_sensor["stuck"] >= 0.5, DECISIVE, 0.0)
    evidence = evidence + np.where(per_sensor["count_ratio"] == 0, DECISIVE, 0.0)
    return per_sensor.assign(evidence=evidence).sort_values("evidence", ascending=False, kind="stable")


@register
class RootCauseAgent(Agent):
    name = "root_cause"
    order = 20

    def __init__(self, shared_window_ms: int = 60_000, min_machines: int = 3) -> None:
        self.shared_window_ms = shared_window_ms
        self.min_machines = min_machines

    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        if not episodes:
            return []
        per_sensor = context.sensor_features(episodes)
        insights: list[Insight] = []
        leading_role: dict[int, str] = {}
        for i, group in per_sensor.groupby("episode"):
            e = episodes[int(i)]
            ranked = rank_sensors(group)
            strong = ranked[ranked["evidence"] > DEVIATING_Z]
            top = list(ranked["sensor"][:3])
            first = strong.dropna(subset=["onset_ms"]).sort_values(["onset_ms", "evidence"], ascending=[True, False])
            order = list(first["sensor"])
            leading_role[int(i)] = str(ranked["role"].iloc[0]) if len(ranked) else ""
            lead = f"; first to move: {order[0]}" if order else ""
            share = float(strong["evidence"].iloc[0] / (strong["evidence"].sum() + 1e-9)) if len(strong) else 0.0
            insights.append(
                Insight(
                    agent=self.name,
                    kind="root_cause",
                    equipment_id=e.equipment_id,
                    site=e.site,
                    episode_id=e.episode_id,
                    title=f"Explained by {', '.join(top)}{lead}",
                    severity="info",
                    confidence=min(1.0, share),
                    sensors=tuple(top),
                    details={
                        "ranking": [
                            {
                                "sensor": r.sensor,
                                "evidence": round(float(min(r.evidence, 1e6)), 3),
                                "shift_z": round(float(r.shift_z), 3),
                                "onset_ms": None if np.isnan(r.onset_ms) else int(r.onset_ms),
                            }
                            for r in ranked.head(8).itertuples()
                        ],
                        "onset_order": order,
                    },
                )
            )
        insights += self.shared_causes(episodes, leading_role)
        return insights

    def shared_cause_with(
        self, episode: Episode, lead_sensor: str, neighbours: pd.DataFrame, lines: Mapping[str, str] | None = None
    ) -> Insight | None:
        """The streaming job's shared cause: ``episode`` (led by ``lead_sensor``) and the other machines of its
        site (``neighbours``: equipment_id, first_ms, top_sensor; agents.episode_store) whose episodes began
        within ``shared_window_ms`` of it, on the same line when lines are known, led by the same sensor role.

        Every machine of the group computes the same identity (site, line, role and the group's first
        start), so the insights table keeps ONE row for the event whichever machine's episode closed last."""
        role = role_of(lead_sensor) if lead_sensor else ""
        if not role or neighbours.empty:
            return None
        lines = lines or {}
        near = neighbours[(neighbours["first_ms"] - episode.start_ms).abs() <= self.shared_window_ms]
        near = near[near["top_sensor"].map(role_of) == role]
        if episode.line:
            near = near[near["equipment_id"].map(lambda m: lines.get(m, "")) == episode.line]
        machines = sorted({episode.equipment_id, *near["equipment_id"]})
        if len(machines) < self.min_machines:
            return None
        first = int(min(episode.start_ms, near["first_ms"].min()))
        last = int(max(episode.start_ms, near["first_ms"].max()))
        where = f"{episode.site}{' / ' + episode.line if episode.line else ''}"
        return Insight(
            agent=self.name,
            kind="shared_cause",
            equipment_id="",
            site=episode.site,
            episode_id=f"shared:{episode.site}:{episode.line}:{role}:{first}",
            title=f"{len(machines)} machines on {where} deviated together ({role}): look for one upstream cause",
            severity="warning",
            confidence=float(min(1.0, len(machines) / (2 * self.min_machines))),
            details={
                "machines": machines,
                "role": role,
                "first_ms": first,
                "last_ms": last,
                "reported_by": episode.episode_id,
            },
        )

    def shared_causes(self, episodes: Sequence[Episode], leading_role: dict[int, str]) -> list[Insight]:
        """Groups of episodes on one site and line, starting within ``shared_window_ms``, led by the same
        sensor role, on at least ``min_machines`` machines: one insight per group."""
        frame = pd.DataFrame(
            {
                "i": range(len(episodes)),
                "site": [e.site for e in episodes],
                "line": [e.line for e in episodes],
                "start": [e.start_ms for e in episodes],
                "machine": [e.equipment_id for e in episodes],
                "role": [leading_role.get(i, "") for i in range(len(episodes))],
            }
        )
        frame = frame.sort_values(["site", "line", "role", "start"], kind="stable")
        new = np.ones(len(frame), dtype=bool)
        key = frame[["site", "line", "role"]].to_numpy()
        same = (key[1:] == key[:-1]).all(axis=1)
        new[1:] = ~same | (np.diff(frame["start"].to_numpy()) > self.shared_window_ms)
        frame["group"] = np.cumsum(new)
        out = []
        for _, g in frame.groupby("group"):
            machines = sorted(set(g["machine"]))
            if len(machines) < self.min_machines:
                continue
            first = episodes[int(g["i"].iloc[0])]
            where = f"{first.site}{' / ' + first.line if first.line else ''}"
            out.append(
                Insight(
                    agent=self.name,
                    kind="shared_cause",
                    equipment_id="",
                    site=first.site,
                    episode_id=first.episode_id,
                    title=f"{len(machines)} machines on {where} deviated together ({g['role'].iloc[0]}): "
                    "look for one upstream cause",
                    severity="warning",
                    confidence=float(min(1.0, len(machines) / (2 * self.min_machines))),
                    details={
                        "machines": machines,
                        "episodes": [episodes[int(i)].episode_id for i in g["i"]],
                        "role": g["role"].iloc[0],
                        "first_ms": int(g["start"].min()),
                        "last_ms": int(g["start"].max()),
                    },
                )
            )
        return out
