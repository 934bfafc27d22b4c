"""The ``device_commands`` table (schema version 12, alarms.commands) on SQLite and
PostgreSQL: a command's states, the worker's region filter, and a reply recorded only
from the device and region it was sent to."""

from __future__ import annotations

from alarms.store import open_store

T0 = 1_763_800_000_000


def test_a_command_is_sent_or_expires_and_only_its_device_answers(store_url):
    store = open_store(store_url)
    try:
        a = store.add_command("B-1", "411303", "interval", {"interval_s": 10, "duration_s": 60},
                              actor="alice", now_ms=T0)
        b = store.add_command("B-2", "411302", "vibrate", {}, actor="olga", now_ms=T0 + 1)
        assert a["expires_at"] > T0 and a["args"] == {"interval_s": 10, "duration_s": 60}
        assert [c["cmd_id"] for c in store.pending_commands(["411303"])] == [a["cmd_id"]]
        assert [c["cmd_id"] for c in store.pending_commands(None)] == [a["cmd_id"], b["cmd_id"]]
        assert store.pending_commands([]) == []

        assert store.mark_command(a["cmd_id"], "sent", T0 + 5)
        assert not store.mark_command(a["cmd_id"], "expired", T0 + 6)  # no longer pending
        assert store.mark_command(b["cmd_id"], "expired", T0 + 7)
        assert store.pending_commands(None) == []

        reply = {"cmd_id": a["cmd_id"], "ts": T0 + 8, "result": "ok", "detail": ""}
        assert store.record_reply(a["cmd_id"], "B-2", "411303", reply, T0 + 9) == "unknown"
        assert store.record_reply(a["cmd_id"], "B-1", "411302", reply, T0 + 9) == "unknown"
        assert store.record_reply("nope", "B-1", "411303", reply, T0 + 9) == "unknown"
        assert store.record_reply(a["cmd_id"], "B-1", "411303", reply, T0 + 10) == "replied"
        assert store.record_reply(a["cmd_id"], "B-1", "411303",
                                  {**reply, "result": "rejected"}, T0 + 11) == "duplicate"
        [row] = store.device_commands("B-1")
        assert (row["state"], row["sent_at"], row["reply"], row["replied_at"]) == (
            "replied", T0 + 5, reply, T0 + 10)
        [row] = store.device_commands("B-2")
        assert (row["state"], row["sent_at"], row["reply"]) == ("expired", None, None)
        assert store.device_region("B-1") is None  # not in the register
    finally:
        store.close_store()
