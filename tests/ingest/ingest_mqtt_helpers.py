"""Small synchronous paho-mqtt clients for the ingest tests (real broker, real packets)."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt

WAIT_S = 15.0  # how long to wait for something that must happen (generous: shared CPUs)


class Refused(Exception):
    def __init__(self, reason_code):
        self.reason_code = reason_code
        super().__init__(f"connection refused: {reason_code}")


class PahoClient:
    """A connected paho client collecting received messages in a queue."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 *, client_id: str = "", clean_session: bool = True,
                 max_inflight: int | None = None, tls_ca: str | None = None):
        self.messages: queue.Queue = queue.Queue()
        self._connected = threading.Event()
        self._result = None
        self.session_present: bool | None = None  # from the CONNACK
        self._subacks: dict[int, list] = {}
        self._suback_event = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session if client_id else True,
                                  protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.on_subscribe = self._on_subscribe
        if tls_ca is not None:
            self.client.tls_set(ca_certs=tls_ca)
        if max_inflight is not None:
            self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(WAIT_S):
            self.close()
            raise TimeoutError("no CONNACK")
        if self._result.is_failure:
            self.close()
            raise Refused(self._result)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._result = reason_code
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_event:
            self._subacks[mid] = reason_codes
            self._suback_event.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> list:
        _, mid = self.client.subscribe(topic, qos)
        with self._suback_event:
            self._suback_event.wait_for(lambda: mid in self._subacks, WAIT_S)
            return self._subacks.get(mid)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT_S)

    def get(self, timeout: float = WAIT_S):
        return self.messages.get(timeout=timeout)

    def drain(self, settle_s: float = 0.3) -> list:
        """Everything received, after waiting ``settle_s`` for stragglers."""
        time.sleep(settle_s)
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
