"""The downlink end to end (issue #16): an operator's command through the console's
API, the ``emfence run`` worker publishing it over a real mosquitto with the project's
ACL and passwords, the device logged in as itself answering on its own reply topic,
and the reply back in the console. Also what the ACL refuses: reading another device's
commands, answering for another device."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from test_run_register_watch import HOME, county, subject

from alarms.store import open_store
from console import create_app
from console.auth import hash_password
from emfence.config import Config
from emfence.run.cli import Service, build_parser, build_service_args
from ingest.passwords import ENGINE_USER, device_password

SECRET = b"downlink-test-secret-0123456789ab"
ENGINE_PW = "engine-pw-d0wn"
PASSWORD = "correct horse battery staple"


class Device:
    """A device's MQTT login (paho, MQTT 3.1.1), collecting what it receives."""

    def __init__(self, port: int, device_id: str):
        self.got: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list] = {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(device_id, device_password(SECRET, device_id))
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.update({mid: codes})
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    async def subscribe(self, topic: str) -> int:
        _, mid = self.c.subscribe(topic, 1)
        await until(lambda: mid in self.subacks, f"SUBACK of {topic}")
        return self.subacks[mid][0].value

    def publish(self, topic: str, doc: dict) -> None:
        self.c.publish(topic, orjson.dumps(doc), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def until(cond, what: str, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


@pytest.mark.mqtt
async def test_a_command_goes_out_and_its_reply_comes_back_only_from_its_device(
        tmp_path, mosquitto_factory):
    broker = mosquitto_factory(passwords={
        "B-1": device_password(SECRET, "B-1"), "B-2": device_password(SECRET, "B-2"),
        ENGINE_USER: ENGINE_PW})
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    store = open_store(url)
    store.add_user("alice", hash_password(PASSWORD), "operator", [HOME], 0)
    now = time.time_ns() // 1_000_000
    store.register.create_zone(county(), actor="root", now_ms=now)
    for sid, dev in (("S-1", "B-1"), ("S-2", "B-2")):
        store.register.create_subject(subject(sid, dev), actor="root", now_ms=now)
    (tmp_path / "engine.pw").write_text(ENGINE_PW)
    service = Service(**build_service_args(build_parser().parse_args([
        "--store", url, "--broker", broker.url, "--username", ENGINE_USER,
        "--password-file", str(tmp_path / "engine.pw"), "--regions", HOME])))
    running = asyncio.create_task(service.run())
    app = create_app(store=store, config=Config(), secure_cookies=False)
    b1, b2 = Device(broker.port, "B-1"), Device(broker.port, "B-2")
    try:
        # B-2 may not read B-1's commands, nor any wildcard of them: mosquitto may grant
        # the SUBACK, but the ACL delivers nothing (asserted once the command is out)
        for spy in (f"emfence/v1/{HOME}/B-1/cmd", "emfence/v1/+/+/cmd", "#"):
            await b2.subscribe(spy)
        assert await b1.subscribe(f"emfence/v1/{HOME}/B-1/cmd") == 1
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://console") as http:
            r = await http.post("/api/login", json={"name": "alice", "password": PASSWORD})
            http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            r = await http.post("/api/devices/B-1/commands",
                                json={"cmd": "interval", "interval_s": 10, "duration_s": 600})
            assert r.status_code == 201, r.text
            cmd_id = r.json()["cmd_id"]

            [(topic, raw)] = await until(lambda: b1.got, "the command at B-1")
            sent = orjson.loads(raw)
            assert topic == f"emfence/v1/{HOME}/B-1/cmd"
            assert {k: sent[k] for k in ("v", "cmd_id", "cmd", "interval_s", "duration_s")} == {
                "v": 1, "cmd_id": cmd_id, "cmd": "interval", "interval_s": 10,
                "duration_s": 600}
            assert sent["expires_ts"] > sent["ts"] >= now
            await until(lambda: store.device_commands("B-1")[0]["state"] == "sent", "sent")

            # a forged reply: B-2 answers on B-1's reply topic (refused by the ACL), then
            # on its own (refused by the engine: not B-2's command)
            reply = {"v": 1, "cmd_id": cmd_id, "ts": now, "result": "rejected",
                     "detail": "forged"}
            b2.publish(f"emfence/v1/{HOME}/B-1/reply", reply)
            b2.publish(f"emfence/v1/{HOME}/B-2/reply", reply)
            await until(lambda: service.counters["command_replies_rejected"] == 1,
                        "the forged reply set aside")
            assert service.rejects["unknown_command"] == 1
            b1.publish(f"emfence/v1/{HOME}/B-1/reply", {**reply, "result": "ok",
                                                        "detail": "interval 10 s"})
            await until(lambda: store.device_commands("B-1")[0]["state"] == "replied",
                        "the reply recorded")
            listed = (await http.get("/api/devices/B-1/commands")).json()["commands"]
            assert [(c["state"], c["reply"]["result"], c["reply"]["detail"]) for c in listed] == [
                ("replied", "ok", "interval 10 s")]
            # the forged replies: one refused by the broker, one set aside by the engine
            assert service.counters["command_replies_replied"] == 1
            assert service.counters["command_replies_rejected"] == 1
            assert b2.got == []
            # a command that expires before it is sent is marked so, never published
            late = store.add_command("B-1", HOME, "vibrate", {}, actor="alice",
                                     now_ms=now - 3_600_000)
            service.commands.wake.set()
            await until(lambda: {c["cmd_id"]: c["state"] for c in
                                 store.device_commands("B-1")}[late["cmd_id"]] == "expired",
                        "the late command expired")
            assert len(b1.got) == 1
    finally:
        b1.close()
        b2.close()
        service.request_stop()
        assert await asyncio.wait_for(running, 60) == 0
        store.close_store()
