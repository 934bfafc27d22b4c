"""Notifications in `emfence run`: with ``[notify.webhook] url`` set, the store plans a
webhook notification for every raised, cleared and escalated alarm event it records (in
the event's transaction) and :class:`alarms.notify_outbox.WebhookOutbox` delivers them
(docs/notifications.md)."""

from __future__ import annotations

from alarms.notify import Planner, webhook_planner
from alarms.notify_outbox import WebhookOutbox
from emfence.config import Config


def notification_planner(config: Config) -> Planner | None:
    """The planner the store is opened with: None when no channel is configured."""
    return webhook_planner if config.notify.webhook.url else None


def webhook_outbox(store, config: Config, regions) -> WebhookOutbox | None:
    """The delivery loop of the engine's regions' notifications, or None without a webhook."""
    if not config.notify.webhook.url:
        return None
    return WebhookOutbox(store, config.notify.webhook, regions=regions)
