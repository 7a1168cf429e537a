"""Slack threads: one machine's incident is one page, and what follows it is said in that page's thread.

A reliability engineer reads the channel as a list of incidents. So with Slack's Web API (a bot token; an
incoming webhook cannot thread, it does not return the message's ``ts``) the relay keeps, per recipient and
machine, the newest thread it opened (:class:`alerting.store.Store`), and each message goes:

- a firing alert of a machine with no thread, or whose thread's last message is older than
  ``slack_thread_reuse_s``: a new message in the channel, which opens the thread of every machine it names;
- a firing alert of a machine whose thread is recent (the same fault firing again, another detector, a
  warning turned critical): a reply; shown in the channel too (``reply_broadcast``) only when it is worse
  than anything the thread said before, so an escalation is seen and a re-fire is not a new page;
- a resolution or the agents' diagnosis: a reply in the machine's thread, not shown in the channel;
- a message about several machines that are not all in the same thread, or about no machine (the
  pipeline's self-monitoring): a message in the channel, as without threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from alerting.diagnoses import FOLLOW_UP_ALERTNAME
from alerting.oncall import severity_rank


@dataclass(frozen=True)
class SlackThread:
    """The newest thread the relay opened about a machine for one recipient."""

    channel: str  # the channel's ID as Slack answered it
    ts: str  # the parent message's ts (the replies' thread_ts)
    severity: str  # the worst severity the thread has told so far
    last_at: float  # epoch seconds of its last message


class _Row(Protocol):
    """What the plan reads of an outbox row (alerting.store.Delivery)."""

    @property
    def equipment_id(self) -> str: ...
    @property
    def alert_status(self) -> str: ...
    @property
    def alertname(self) -> str: ...
    @property
    def severity(self) -> str: ...


@dataclass(frozen=True)
class ThreadPlan:
    thread: SlackThread | None  # reply in this thread; None: a new message in the channel
    broadcast: bool  # a reply also shown in the channel
    opens: tuple[str, ...]  # machines whose thread this message opens (a new firing message)


def worst_severity(rows: Sequence[_Row]) -> str:
    return max((r.severity for r in rows), key=severity_rank, default="")


def plan_message(rows: Sequence[_Row], threads: Mapping[str, SlackThread], now: float, reuse_s: float) -> ThreadPlan:
    """Where one message (the rows of one batch: one recipient, one status) goes; see the module docstring."""
    machines = tuple(sorted({r.equipment_id for r in rows if r.equipment_id}))
    lead = rows[0]
    follow_up = lead.alertname == FOLLOW_UP_ALERTNAME
    firing = lead.alert_status == "firing" and not follow_up
    new = ThreadPlan(None, False, machines if firing else ())
    if not machines or not all(m in threads for m in machines):
        return new
    if len({(threads[m].channel, threads[m].ts) for m in machines}) != 1:
        return new
    thread = threads[machines[0]]
    if not firing:
        return ThreadPlan(thread, False, ())
    if now - thread.last_at > reuse_s:
        return new
    return ThreadPlan(thread, severity_rank(worst_severity(rows)) > severity_rank(thread.severity), ())
