"""Notifications in `emfence run` (docs/notifications.md).

With ``[notify.webhook] url`` set, the store plans a webhook notification for every
raised, cleared and escalated alarm event it records (in the event's transaction). With
``[notify.email]`` / ``[notify.sms]`` set and a roster resolver given (the duty roster's
:data:`alarms.notify.Resolver`), it also plans e-mail and SMS to the people the roster
names. :class:`Notifier` runs one delivery loop per configured channel and gathers their
health counters per channel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from alarms.notify import Planner, Resolver, webhook_planner
from alarms.notify_outbox import ChannelOutbox, WebhookOutbox
from alarms.notify_people import MessageSettings, combine, people_planner
from alarms.notify_senders import EmailSender, SmsSender
from alarms.notify_storm import StormLimit
from alarms.notify_templates import summary
from emfence.config import Config


def people_channels(config: Config) -> list[str]:
    """The people-facing channels configured: ``email``, ``sms``."""
    n = config.notify
    return [name for name, on in (("email", n.email.host), ("sms", n.sms.url)) if on]


def message_settings(config: Config, region_names: dict[str, str] | None = None
                     ) -> MessageSettings:
    """The messages' settings; ``region_names`` default to the bundled county names."""
    if region_names is None:
        from console.regions import bundled_region_names
        region_names = bundled_region_names()
    return MessageSettings(lang=config.notify.lang, timezone=config.register.timezone,
                           public_url=config.console.public_url,
                           region_names=dict(region_names),
                           closing_messages=config.notify.closing_messages)


def notification_planner(config: Config, resolver: Resolver | None = None,
                         region_names: dict[str, str] | None = None) -> Planner | None:
    """The planner the store is opened with: None when no channel is configured. The
    people channels need ``resolver`` (the roster): without it they plan nothing."""
    hook = webhook_planner if config.notify.webhook.url else None
    chans = people_channels(config)
    people = (people_planner(resolver, chans, message_settings(config, region_names))
              if chans and resolver is not None else None)
    return combine(hook, people)


def storm_limit(config: Config, region_names: dict[str, str] | None = None) -> StormLimit:
    """The per-recipient rate limit of the people channels, with its summary text."""
    settings = message_settings(config, region_names)

    def summarize(items: list[dict[str, Any]]) -> bytes:
        lang = items[0]["lang"]
        msg = summary(items, lang, region_names=settings.region_names,
                      timezone=settings.timezone, first_ms=items[0]["created_at"],
                      last_ms=items[-1]["created_at"],
                      link=settings.public_url or None)
        return orjson.dumps({"to": items[0]["to"], "lang": lang, "type": "summary",
                             "subject": msg.subject, "text": msg.text})

    n = config.notify
    return StormLimit(round(n.storm_window_s * 1000), n.storm_max_per_recipient, summarize)


class Notifier:
    """The delivery loops of the configured channels (run as the task ``notify``)."""

    def __init__(self, outboxes: list[ChannelOutbox]):
        self.outboxes = outboxes

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Per channel: sent, failed_attempts, summarized, store_errors, errors."""
        return {o.channel: dict(o.counters) for o in self.outboxes}

    def notify(self) -> None:
        for o in self.outboxes:
            o.notify()

    async def run(self) -> None:
        await asyncio.gather(*(o.run() for o in self.outboxes))


def notify_outboxes(store, config: Config, regions,
                    region_names: dict[str, str] | None = None) -> Notifier | None:
    """The delivery loops of the engine's regions' notifications, or None without a
    channel."""
    n = config.notify
    out: list[ChannelOutbox] = []
    if n.webhook.url:
        out.append(WebhookOutbox(store, n.webhook, regions=regions))
    storm = storm_limit(config, region_names)
    if n.email.host:
        out.append(ChannelOutbox(store, EmailSender(n.email), regions=regions, storm=storm,
                                 concurrency=4))
    if n.sms.url:
        out.append(ChannelOutbox(store, SmsSender(n.sms), regions=regions, storm=storm))
    return Notifier(out) if out else None
