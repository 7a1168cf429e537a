"""What people read: Slack Block Kit, SMS text and e-mail for an alert, firing or resolved.

An alert is one story told twice: the firing message says how bad (severity), which machine, what is wrong
and why, and links to the machine's console page; the resolved message carries the same title, says
RESOLVED and how long it lasted, so it reads as the end of the page it answers. Every field is optional
except the alert name: missing labels or annotations are left out, unknown annotations are shown as-is.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import default as default_email_policy
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

from alerting.payload import Alert

# Annotations rendered in their own place; any other annotation is shown as an extra field.
KNOWN_ANNOTATIONS = ("summary", "description", "console_url", "diagnosis")
WHOLE_MACHINE = "*"  # the publisher's sensor label of machine-wide alerts (jobs/alert_publisher.py)
ELLIPSIS = "..."  # three GSM-7 characters; the one-character ellipsis would switch SMS to UCS-2 (70/segment)
_STYLE = {  # severity -> (emoji, word)
    "critical": (":red_circle:", "CRITICAL"),
    "warning": (":large_orange_circle:", "WARNING"),
    "info": (":large_blue_circle:", "INFO"),
    "update": (":mag:", "UPDATE"),  # a follow-up: the agents' diagnosis of an alert already sent
}
_RESOLVED = (":white_check_mark:", "RESOLVED")
# An SMS keeps the console link only if at least this many septets of text still fit beside it.
SMS_MIN_TEXT = 40
# Slack's limits (a message over them is rejected with HTTP 400, which would dead-letter it).
_SLACK_HEADER_MAX = 150
_SLACK_TEXT_MAX = 3000
_SLACK_FIELD_MAX = 2000
_SLACK_FIELDS_MAX = 10
_SLACK_URL_MAX = 3000
# Characters that end a link in Slack's <url|text> syntax, or a word in a text message (quoted in a URL).
_LINK_BREAKERS = re.compile(r"[<>|\s\"']")
_NOT_FINGERPRINT = re.compile(r"[^0-9A-Za-z._-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Headers are folded only past RFC 5322's hard limit: Python's folding at 78 characters moves a long subject
# onto a continuation line, which some clients show with a leading space.
_EMAIL_POLICY = default_email_policy.clone(max_line_length=998)

# GSM 03.38 basic character set (one septet each) and its extension table (two septets each).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")
_GSM_REPLACEMENTS = {
    "\u2014": "-",
    "\u2013": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u00b7": "-",
    "\u2022": "-",
    "\u00b0": " deg",
    "\u00d7": "x",
    "\u00b5": "u",
    "\u00a0": " ",
    "\t": " ",
    "\u2192": "->",
    "\u2265": ">=",
    "\u2264": "<=",
    "`": "'",
}


@dataclass(frozen=True)
class MessageContext:
    """What messages need besides the alert: where the console lives and how long an SMS may be."""

    console_url: str
    sms_max_chars: int = 306
    external_url: str = ""  # Alertmanager's own URL (from the webhook)


# ---------------------------------------------------------------------------------------------
# The story: shared by every channel
# ---------------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """A header value: control characters (line breaks first) become spaces, so no label can end the header
    and start another (``Bcc:``), and the mail library does not refuse the whole message."""
    return _CONTROL.sub(" ", text)


def fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint (hex) as it may appear in a message or a mail header: letters, digits, ._- only,
    so a forged one can carry neither Slack syntax nor a line break into a header."""
    return _NOT_FINGERPRINT.sub("", alert.fingerprint)[:64]


def severity(alert: Alert) -> str:
    return alert.label("severity").lower() or "warning"


def story_title(alert: Alert) -> str:
    """The same title for the firing and the resolved message: alert name and machine (or site)."""
    name = alert.label("alertname") or "Alert"
    machine, site = alert.label("equipment_id"), alert.label("site")
    if machine:
        return f"{name} on {machine}"
    return f"{name} at {site}" if site else name


def headline(alert: Alert) -> str:
    """'CRITICAL: <title>' while firing, 'RESOLVED: <title>' once it ended."""
    word = _RESOLVED[1] if alert.status == "resolved" else _STYLE.get(severity(alert), _STYLE["warning"])[1]
    if alert.status == "firing" and severity(alert) not in _STYLE:
        word = severity(alert).upper()
    return f"{word}: {story_title(alert)}"


def safe_link(link: str, origin: str | None = None) -> bool:
    """Whether ``link`` may go into a message: http(s), no character that ends Slack's ``<url|text>`` syntax
    or an SMS word, and, with ``origin``, under that scheme and host (a label or annotation cannot send people
    elsewhere)."""
    if not link.startswith(("http://", "https://")) or _LINK_BREAKERS.search(link):
        return False
    if origin is None:
        return True
    try:
        ours, theirs = urlsplit(origin), urlsplit(link)
    except ValueError:  # an unbalanced IPv6 bracket ("https://]x/"): not a link of ours
        return False
    return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


def console_link(alert: Alert, ctx: MessageContext) -> str:
    """The machine's console page: the alert's console_url annotation when it points into the configured
    console, else built from settings (an annotation elsewhere is ignored: no phishing link in a page)."""
    base = ctx.console_url.rstrip("/")
    link = alert.annotations.get("console_url", "")
    if link and safe_link(link, base):
        return link
    machine = alert.label("equipment_id")
    return f"{base}/?equipment={quote(machine)}" if machine else base


def lasted(alert: Alert) -> float | None:
    """Seconds from start to end of a resolved alert (None while firing or without an end time)."""
    end = alert.ended_at
    return None if end is None else max(0.0, (end - alert.startsAt).total_seconds())


def format_duration(seconds: float) -> str:
    """'45 s', '12 min 5 s', '2 h 5 min', '3 d 4 h': precise when short, coarse when long."""
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def machine_text(alert: Alert) -> str:
    machine, kind = alert.label("equipment_id"), alert.label("equipment_type")
    if machine and kind:
        return f"{machine} ({kind})"
    return machine or kind


def facts(alert: Alert) -> list[tuple[str, str]]:
    """(name, value) pairs present on the alert, in reading order; extra annotations at the end."""
    pairs = [
        ("Severity", severity(alert).upper()),
        ("Machine", machine_text(alert)),
        ("Site", alert.label("site")),
        ("Sensor", "whole machine" if alert.label("sensor") == WHOLE_MACHINE else alert.label("sensor")),
        ("Detector", alert.label("detector")),
        ("Started", format_time(alert.startsAt)),
    ]
    if (seconds := lasted(alert)) is not None:
        pairs += [("Ended", format_time(alert.ended_at)), ("Lasted", format_duration(seconds))]  # type: ignore[arg-type]
    extra = sorted((k, v) for k, v in alert.annotations.items() if k not in KNOWN_ANNOTATIONS and v)
    pairs += [(name.replace("_", " ").capitalize(), value) for name, value in extra]
    return [(name, value) for name, value in pairs if value]


# ---------------------------------------------------------------------------------------------
# Slack
# ---------------------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _header(text: str) -> str:
    # Escaped like every other field (Slack un-escapes the entities when it shows them), cut after escaping.
    return _cut(slack_escape(text), _SLACK_HEADER_MAX)


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(text, _SLACK_TEXT_MAX)}


def slack_message(alert: Alert, ctx: MessageContext) -> dict[str, Any]:
    """Block Kit payload for an incoming webhook: header, what/why, facts, console button, context."""
    resolved = alert.status == "resolved"
    emoji = _RESOLVED[0] if resolved else _STYLE.get(severity(alert), _STYLE["warning"])[0]
    title = headline(alert)
    summary, description = alert.annotations.get("summary", ""), alert.annotations.get("description", "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _header(f"{emoji} {title}"), "emoji": True},
        },
    ]
    story: list[str] = []
    if resolved:
        seconds = lasted(alert)
        story.append(f"*Resolved* after *{format_duration(seconds)}*." if seconds is not None else "*Resolved*.")
    if summary:
        story.append(f"*What:* {slack_escape(summary)}")
    if description:
        story.append(f"*Why:* {slack_escape(description)}")
    if diagnosis := alert.annotations.get("diagnosis", ""):
        story.append(f"*Diagnosis:* {slack_escape(diagnosis)}")
    if story:
        blocks.append({"type": "section", "text": _mrkdwn("\n".join(story))})
    fields = [
        # The name too: an extra annotation's key is the sender's text as much as its value.
        _mrkdwn(f"*{slack_escape(name)}*\n{slack_escape(_cut(value, _SLACK_FIELD_MAX - len(name) - 4))}")
        for name, value in facts(alert)[:_SLACK_FIELDS_MAX]
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    link = console_link(alert, ctx)
    if link.startswith(("http://", "https://")) and len(link) <= _SLACK_URL_MAX:
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open machine in console", "emoji": False},
            "url": link,
        }
        if not resolved and severity(alert) == "critical":
            button["style"] = "danger"
        blocks.append({"type": "actions", "elements": [button]})
    context = [f"Vigil alert `{fingerprint(alert)}`"]
    if safe_link(alert.generatorURL):
        context.append(f"<{alert.generatorURL}|source query>")
    blocks.append({"type": "context", "elements": [_mrkdwn(" | ".join(context))]})
    # `text` is the notification preview (phone lock screen) and the fallback for old clients.
    fallback = title + (f" - {summary}" if summary else "")
    return {"text": slack_escape(_cut(fallback, _SLACK_TEXT_MAX)), "blocks": blocks}


# ---------------------------------------------------------------------------------------------
# SMS
# ---------------------------------------------------------------------------------------------


def to_gsm(text: str) -> str:
    """Replace what GSM-7 cannot encode (one such character makes the whole SMS UCS-2: 70 chars/segment)."""
    out: list[str] = []
    for char in text:
        if char in GSM_BASIC or char in GSM_EXTENSION:
            out.append(char)
        elif char in _GSM_REPLACEMENTS:
            out.append(_GSM_REPLACEMENTS[char])
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            if base and all(c in GSM_BASIC for c in base):
                out.append(base)
            elif unicodedata.category(char) not in ("So", "Sk", "Cf", "Cc", "Mn"):  # drop emoji and controls
                out.append("?")
    return " ".join("".join(out).split())


def gsm_length(text: str) -> int:
    """Septets the text takes in GSM-7: extension characters ({, }, [, ], ~, |, ^, \\, euro) count twice."""
    return len(text) + sum(1 for char in text if char in GSM_EXTENSION)


def fit_gsm(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` septets, ending with '...' when something was cut."""
    if gsm_length(text) <= limit:
        return text
    budget = limit - len(ELLIPSIS)
    used, end = 0, 0
    for end, char in enumerate(text):  # noqa: B007 -- `end` is the cut position after the loop
        cost = 2 if char in GSM_EXTENSION else 1
        if used + cost > budget:
            break
        used += cost
    return text[:end].rstrip() + ELLIPSIS


def sms_text(alert: Alert, ctx: MessageContext) -> str:
    """One GSM-7 text of at most ``ctx.sms_max_chars`` septets; the console link survives the cut if it fits."""
    site = alert.label("site")
    head = headline(alert) + (f" ({site})" if site and site not in story_title(alert) else "")
    parts = [head]
    if (seconds := lasted(alert)) is not None:
        parts.append(f"after {format_duration(seconds)}")
    summary, description = alert.annotations.get("summary", ""), alert.annotations.get("description", "")
    diagnosis = alert.annotations.get("diagnosis", "")  # before the why: the phone shows the start
    diagnosis = f"Diagnosis: {diagnosis}" if diagnosis else ""
    text = to_gsm(" - ".join(p for p in (" ".join(parts), summary, diagnosis, description) if p))
    link = to_gsm(console_link(alert, ctx))
    limit = ctx.sms_max_chars
    if link and gsm_length(link) + 1 + SMS_MIN_TEXT <= limit:  # the link stays if enough text fits beside it
        return fit_gsm(text, limit - gsm_length(link) - 1) + " " + link
    return fit_gsm(text, limit)


# ---------------------------------------------------------------------------------------------
# E-mail
# ---------------------------------------------------------------------------------------------


def _story_message_id(story_key: str, sender: str, resolved: bool) -> str:
    domain = sender.rsplit("@", 1)[-1].strip(">") or "vigil.local"
    return f"<vigil-{story_key}{'-resolved' if resolved else ''}@{domain}>"


def email_message(alert: Alert, ctx: MessageContext, sender: str, to: str, story_key: str) -> EmailMessage:
    """A plain-text e-mail; the resolved one replies to the firing one (same thread in mail clients)."""
    resolved = alert.status == "resolved"
    site = alert.label("site")
    subject = f"[Vigil] {headline(alert)}" + (f" ({site})" if site and site not in story_title(alert) else "")
    if (seconds := lasted(alert)) is not None:
        subject += f", lasted {format_duration(seconds)}"
    lines = [headline(alert), ""]
    for label, key in (("What", "summary"), ("Why", "description"), ("Diagnosis", "diagnosis")):
        if value := alert.annotations.get(key):
            lines.append(f"{label}: {value}")
    if len(lines) > 2:
        lines.append("")
    width = max((len(name) for name, _ in facts(alert)), default=0)
    lines += [f"{name + ':':<{width + 1}} {value}" for name, value in facts(alert)]
    lines += ["", f"Console: {console_link(alert, ctx)}"]
    if safe_link(alert.generatorURL):
        lines.append(f"Source:  {alert.generatorURL}")
    if ctx.external_url:
        lines.append(f"Alertmanager: {ctx.external_url}")
    lines += ["", f"-- Vigil alert {fingerprint(alert)}"]
    message = EmailMessage(policy=_EMAIL_POLICY)
    message["Subject"] = one_line(subject)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = _story_message_id(story_key, sender, resolved)
    if resolved:
        first = _story_message_id(story_key, sender, False)
        message["In-Reply-To"] = first
        message["References"] = first
    message["X-Vigil-Fingerprint"] = fingerprint(alert)
    message.set_content("\n".join(lines) + "\n")
    return message


# ---------------------------------------------------------------------------------------------
# Batches: the new alerts of one Alertmanager notification for one recipient, as one message
# ---------------------------------------------------------------------------------------------

_SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1, "update": 1}
SLACK_GROUP_ITEMS = 10  # alerts listed one by one in a Slack batch message; the rest are counted


def _reading_order(alert: Alert) -> tuple[int, str, str, str]:
    """Most severe first, then by machine, sensor and detector (a stable, readable order)."""
    return (
        -_SEVERITY_RANK.get(severity(alert), 2),
        alert.label("equipment_id"),
        alert.label("sensor"),
        alert.label("detector"),
    )


def _worst_first(alerts: list[Alert]) -> list[Alert]:
    return sorted(alerts, key=_reading_order)


def group_title(alerts: list[Alert], with_name: bool = True) -> str:
    """'CRITICAL: 2 alerts on pump-0004', 'WARNING: 5 machines at site-1', 'RESOLVED: 3 alerts at site-2'."""
    lead = min(alerts, key=_reading_order)
    word = headline(lead).split(":", 1)[0]
    machines = {a.label("equipment_id") for a in alerts}
    sites = {a.label("site") for a in alerts}
    name = lead.label("alertname") if len({a.label("alertname") for a in alerts}) == 1 else ""
    count = f"{len(machines)} machines" if len(machines) > 1 and "" not in machines else f"{len(alerts)} alerts"
    where = ""
    if len(machines) == 1 and "" not in machines:
        where = f" on {lead.label('equipment_id')}"
    elif len(sites) == 1 and "" not in sites:
        where = f" at {lead.label('site')}"
    return f"{word}: {count}{where}" + (f" ({name})" if name and with_name else "")


def item_text(alert: Alert, with_machine: bool, with_summary: bool = True) -> str:
    """One alert of a batch in a few words: '[machine] sensor detector[: summary]'."""
    sensor = alert.label("sensor")
    parts = [
        alert.label("equipment_id") if with_machine else "",
        "whole machine" if sensor == WHOLE_MACHINE else sensor,
        alert.label("detector"),
    ]
    what = " ".join(p for p in parts if p) or alert.label("alertname") or "alert"
    summary = alert.annotations.get("summary", "") if with_summary else ""
    return f"{what}: {summary}" if summary else what


def _diagnoses_by_machine(alerts: list[Alert]) -> dict[str, str]:
    """Each machine's diagnosis in a batch (its alerts of one episode carry the same one), worst machine first."""
    found: dict[str, str] = {}
    for alert in alerts:
        if diagnosis := alert.annotations.get("diagnosis", ""):
            found.setdefault(alert.label("equipment_id"), diagnosis)
    return found


def _one_machine(alerts: list[Alert]) -> bool:
    return len({a.label("equipment_id") for a in alerts}) == 1


def slack_group_message(alerts: list[Alert], ctx: MessageContext) -> dict[str, Any]:
    """One Block Kit message for a batch: header with the count, one line per alert, the console button."""
    if len(alerts) == 1:
        return slack_message(alerts[0], ctx)
    alerts = _worst_first(alerts)
    lead, resolved = alerts[0], alerts[0].status == "resolved"
    emoji = _RESOLVED[0] if resolved else _STYLE.get(severity(lead), _STYLE["warning"])[0]
    title = group_title(alerts)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _header(f"{emoji} {title}"), "emoji": True},
        },
    ]
    with_machine = not _one_machine(alerts)
    lines = []
    for alert in alerts[:SLACK_GROUP_ITEMS]:
        word = "" if resolved else f"*{severity(alert).upper()}* "
        link = console_link(alert, ctx)
        text = slack_escape(item_text(alert, with_machine))
        machine = slack_escape(alert.label("equipment_id"))
        # An alert without a machine (a pipeline alert in a mixed batch) gets no link: "" would match anywhere.
        if with_machine and machine and link.startswith(("http://", "https://")) and len(link) <= 500:
            text = text.replace(machine, f"<{link}|{machine}>", 1)
        lines.append(f"- {word}{text}")
    if len(alerts) > SLACK_GROUP_ITEMS:
        lines.append(f"... and {len(alerts) - SLACK_GROUP_ITEMS} more (see Alertmanager or the console)")
    blocks.append({"type": "section", "text": _mrkdwn("\n".join(lines))})
    if description := lead.annotations.get("description", ""):
        blocks.append({"type": "section", "text": _mrkdwn(f"*Why (first):* {slack_escape(description)}")})
    if found := _diagnoses_by_machine(alerts):
        text = "\n".join(
            f"- {slack_escape(machine)}: {slack_escape(d)}" if with_machine else slack_escape(d)
            for machine, d in found.items()
        )
        blocks.append({"type": "section", "text": _mrkdwn(f"*Diagnosis:*{chr(10) if with_machine else ' '}{text}")})
    link = console_link(lead, ctx)
    if not with_machine and link.startswith(("http://", "https://")) and len(link) <= _SLACK_URL_MAX:
        button: dict[str, Any] = {
            "type": "button",
            "url": link,
            "text": {"type": "plain_text", "text": "Open machine in console", "emoji": False},
        }
        if not resolved and severity(lead) == "critical":
            button["style"] = "danger"
        blocks.append({"type": "actions", "elements": [button]})
    fingerprints = ", ".join(f"`{fingerprint(a)}`" for a in alerts[:SLACK_GROUP_ITEMS])
    blocks.append({"type": "context", "elements": [_mrkdwn(f"Vigil alerts {fingerprints}")]})
    fallback = title + " - " + item_text(lead, with_machine)
    return {"text": slack_escape(_cut(fallback, _SLACK_TEXT_MAX)), "blocks": blocks}


def sms_group_text(alerts: list[Alert], ctx: MessageContext) -> str:
    """One SMS for a batch: the count, where, then the alerts in a few words each, the console link if it fits."""
    if len(alerts) == 1:
        return sms_text(alerts[0], ctx)
    alerts = _worst_first(alerts)
    lead = alerts[0]
    site = lead.label("site")
    head = group_title(alerts, with_name=False)
    if site and site not in head:
        head += f" ({site})"
    with_machine = not _one_machine(alerts)
    # Every condition in a few words first (what the phone shows), then the worst one's summary.
    items = "; ".join(item_text(a, with_machine, with_summary=False) for a in alerts)
    summary = lead.annotations.get("summary", "")
    diagnosis = "; ".join(f"{m}: {d}" if with_machine else d for m, d in _diagnoses_by_machine(alerts).items())
    text = to_gsm(
        f"{head} - {items}" + (f" - Diagnosis: {diagnosis}" if diagnosis else "") + (f" - {summary}" if summary else "")
    )
    link = to_gsm(console_link(lead, ctx) if not with_machine else ctx.console_url.rstrip("/"))
    limit = ctx.sms_max_chars
    if link and gsm_length(link) + 1 + SMS_MIN_TEXT <= limit:
        return fit_gsm(text, limit - gsm_length(link) - 1) + " " + link
    return fit_gsm(text, limit)


def email_group_message(
    alerts: list[Alert], ctx: MessageContext, sender: str, to: str, story_keys: list[str]
) -> EmailMessage:
    """One e-mail for a batch: every alert's full story, worst first (a single alert keeps its own threading)."""
    if len(alerts) == 1:
        return email_message(alerts[0], ctx, sender, to, story_keys[0])
    pairs = sorted(zip(alerts, story_keys, strict=True), key=lambda pair: _reading_order(pair[0]))
    alerts, story_keys = [a for a, _ in pairs], [k for _, k in pairs]
    lead = alerts[0]
    site = lead.label("site")
    title = group_title(alerts)
    subject = f"[Vigil] {title}" + (f" ({site})" if site and site not in title else "")
    lines = [title, ""]
    for alert in alerts:
        lines += [headline(alert)]
        for label, key in (("What", "summary"), ("Why", "description"), ("Diagnosis", "diagnosis")):
            if value := alert.annotations.get(key):
                lines.append(f"  {label}: {value}")
        width = max((len(name) for name, _ in facts(alert)), default=0)
        lines += [f"  {name + ':':<{width + 1}} {value}" for name, value in facts(alert)]
        lines += [f"  Console: {console_link(alert, ctx)}", f"  -- Vigil alert {fingerprint(alert)}", ""]
    if ctx.external_url:
        lines.append(f"Alertmanager: {ctx.external_url}")
    message = EmailMessage(policy=_EMAIL_POLICY)
    message["Subject"] = one_line(subject)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False, usegmt=True)
    batch_key = "-".join(sorted(story_keys))[:48]
    message["Message-ID"] = _story_message_id(f"batch-{batch_key}", sender, lead.status == "resolved")
    message["X-Vigil-Fingerprint"] = ", ".join(fingerprint(a) for a in alerts)
    message.set_content("\n".join(lines) + "\n")
    return message
