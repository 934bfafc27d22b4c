"""nats-server with JetStream and its MQTT listener, for the tests: one node with a
permission the test rewrites (``NatsMqtt``), and the shipped three-node cluster of
deploy/nats/ (``NatsCluster``), both on free loopback ports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest
from ingest_fleet import CONSOLE_PW, ENGINE_PW, LOADGEN_PW, ROOT, SECRET, until

from ingest.mosquitto import free_port
from ingest.passwords import engine_account

DEPLOY = ROOT / "deploy" / "nats"
NODES = 3
READY_S = 30.0


def nats_binary() -> str:
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.fail("nats-server missing: install Debian's nats-server package")
    return binary


class NatsMqtt:
    """One node; the worker may read the topics of ``regions`` and its own only (a NATS
    subscribe permission). ``allow(regions)`` rewrites that; ``reload()`` applies it live
    (SIGHUP: no client is disconnected), ``restart()`` by a restart (the sessions are
    kept in JetStream)."""

    def __init__(self, root, regions: list[str], account: str = engine_account("worker-1")):
        self.binary = nats_binary()
        self.root, self.account = root, account
        self.port, self.client_port = free_port(), free_port()
        self.url, self.auth = f"mqtt://127.0.0.1:{self.port}", False
        self.conf = root / "nats.conf"
        self.log = root / "nats.log"
        self.proc = None
        self.allow(regions)

    def allow(self, regions: list[str]) -> None:
        allow = [f"emfence.v1.{r}.*.{kind}" for r in regions for kind in ("fix", "status", "reply")]
        allow += ["emfence.v1.engine.>", "$MQTT.sub.>"]
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.client_port}\nserver_name: emfence-test\n"
            f"jetstream {{ store_dir: \"{self.root / 'js'}\" }}\n"
            "authorization { users = [ {user: \"%s\", password: \"%s\", permissions: "
            "{subscribe: {allow: %s}, publish: {allow: [\">\"]}}} ] }\n"
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n" % (self.account, ENGINE_PW,
                                                             json.dumps(allow)))

    def start(self) -> NatsMqtt:
        mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=log)
        until(lambda: "Server is ready" in self.log.read_text()[mark:], bool, 20)
        return self

    def reload(self) -> None:
        mark = self.log.stat().st_size
        self.proc.send_signal(signal.SIGHUP)
        until(lambda: "Reloaded server configuration" in self.log.read_text()[mark:], bool,
              20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


class Node:
    """One node of the cluster: what EngineProcess and the test clients need."""

    def __init__(self, i: int, port: int, conf, log):
        self.i, self.port, self.conf, self.log = i, port, conf, log
        self.name = f"emfence-nats-{i}"  # its server_name (deploy/nats/node-I.conf)
        self.url, self.auth = f"mqtt://127.0.0.1:{port}", False
        self.proc: subprocess.Popen | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class NatsCluster:
    """deploy/nats/node-{1,2,3}.conf, mqtt.conf and an accounts.conf written by
    deploy/nats/nats_users.py for ``fleet`` (the worker-1 engine, the console and the
    load generator), rewritten only for free ports and a store directory under ``root``
    (and, given ``ack_wait``, mqtt.conf's ack_wait: a test that waits for NATS to re-send
    need not wait the shipped 60 s)."""

    def __init__(self, root, fleet, ack_wait: str | None = None):
        self.binary = nats_binary()
        self.dir = root / "nats"
        self.dir.mkdir()
        mqtt = (DEPLOY / "mqtt.conf").read_text()
        if ack_wait is not None:
            mqtt, n = re.subn(r'(?m)^ack_wait: "[^"]*"', f'ack_wait: "{ack_wait}"', mqtt)
            assert n == 1, "deploy/nats/mqtt.conf has no ack_wait line"
        (self.dir / "mqtt.conf").write_text(mqtt)
        self.write_accounts(root, fleet)
        text = {i: (DEPLOY / f"node-{i}.conf").read_text() for i in range(1, NODES + 1)}
        shipped = sorted({int(p) for t in text.values()
                          for p in re.findall(r"127\.0\.0\.1:(\d+)", t)})
        ports = {p: free_port() for p in shipped}
        self.nodes = []
        for i, t in text.items():
            mqtt_port = int(re.search(r"mqtt \{\s*listen: 127\.0\.0\.1:(\d+)", t).group(1))
            t = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}",
                       t)
            t = t.replace("/var/lib/emfence-nats", str(self.dir / "js"))
            conf = self.dir / f"node-{i}.conf"
            conf.write_text(t)
            self.nodes.append(Node(i, ports[mqtt_port], conf, self.dir / f"node-{i}.log"))

    def write_accounts(self, root, fleet) -> None:
        (root / "secret").write_bytes(SECRET)
        for name, pw in (("engine", ENGINE_PW), ("console", CONSOLE_PW),
                         ("loadgen", LOADGEN_PW)):
            (root / f"{name}.pw").write_text(pw + "\n")
        subprocess.run([sys.executable, str(DEPLOY / "nats_users.py"), str(fleet.subjects_path),
                        "--secret-file", str(root / "secret"),
                        "--engine", f"worker-1={root / 'engine.pw'}",
                        "--console", str(root / "console.pw"),
                        "--loadgen", str(root / "loadgen.pw"),
                        "-o", str(self.dir / "accounts.conf")], check=True, cwd=ROOT)

    def start(self) -> NatsCluster:
        for n in self.nodes:
            with open(n.log, "ab") as log:
                n.proc = subprocess.Popen([self.binary, "-c", str(n.conf)], stdout=log,
                                          stderr=log)
        # Every node ready, and the cluster's JetStream metadata leader elected. (Only
        # the leader and the nodes that learn of it by an append say so in their logs: a
        # node that had the leader's state from the start may never log it.)
        for n in self.nodes:
            until(lambda n=n: "Server is ready" in n.text(), bool, READY_S)
            assert "Server is ready" in n.text(), n.text()[-3000:]
        until(lambda: any("metadata leader" in n.text() for n in self.nodes), bool, READY_S)
        assert any("metadata leader" in n.text() for n in self.nodes), \
            "\n".join(n.text()[-1500:] for n in self.nodes)
        return self

    def node_of(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def consumer_leader(self, filter_suffix: str) -> str | None:
        """The server name (``emfence-nats-I``) leading the MQTT session consumer whose
        filter ends with ``filter_suffix`` (NATS monitoring, /jsz); None if none."""
        for n in self.nodes:
            if n.proc is None:
                continue
            port = re.search(r"(?m)^http: 127\.0\.0\.1:(\d+)", n.conf.read_text()).group(1)
            url = (f"http://127.0.0.1:{port}/jsz?accounts=true&streams=true&consumers=true"
                   "&config=true")
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.load(r)
            for account in data.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    for c in stream.get("consumer_detail") or []:
                        if c.get("config", {}).get("filter_subject", "").endswith(filter_suffix):
                            return c.get("cluster", {}).get("leader")
        return None

    def kill9(self, node: Node) -> None:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(20)
        node.proc = None

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc is not None:
                n.proc.wait(20)
                n.proc = None
