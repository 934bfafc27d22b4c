"""A delivery process for the kill -9 test: ``python -m tests.alarms.notify_driver
STORE_URL GATEWAY_URL`` runs the SMS channel's outbox (with the storm limit) over the
store until it is killed, as `emfence run`'s ``notify`` task does."""

from __future__ import annotations

import asyncio
import sys

from alarms import open_store
from alarms.notify_outbox import ChannelOutbox
from alarms.notify_senders import SmsSender
from alarms.notify_storm import StormLimit
from emfence.config import SmsConfig


def main(store_url: str, gateway_url: str) -> None:
    store = open_store(store_url)
    cfg = SmsConfig(url=gateway_url, body='{"mobile": "{phone}", "content": "{text}"}',
                    timeout_s=30, retry_min_s=0.1, retry_max_s=0.5)
    storm = StormLimit(600_000, 1000, lambda items: b"{}")
    outbox = ChannelOutbox(store, SmsSender(cfg), storm=storm, concurrency=4)
    print("delivering", flush=True)
    asyncio.run(outbox.run())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
