"""deploy/systemd: the worker unit's command line is one `emfence run` accepts (with the
example environment file's values, expanded as systemd expands them), and the unit keeps
the hardening docs/operations.md promises."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from emfence.run.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read(DEPLOY / "emfence-worker@.service")
    return cp


def environment() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "worker.example.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def systemd_argv(line: str, instance: str, env: dict[str, str]) -> list[str]:
    """ExecStart's words as systemd makes them: %i the instance, ${VAR} one word,
    $VAR split at whitespace into words."""
    out = []
    for word in shlex.split(line.replace("%i", instance)):
        if re.fullmatch(r"\$[A-Z_]+", word):
            out += env[word[1:]].split()
        else:
            out.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: env[m.group(1)], word))
    return out


def test_the_unit_runs_a_worker_emfence_run_accepts():
    service = unit()["Service"]
    argv = systemd_argv(service["ExecStart"], "worker-1", environment())
    assert argv[0].endswith("/bin/emfence") and argv[1] == "run"
    args = build_parser().parse_args(argv[2:])
    assert args.name == "worker-1" and args.username == "emfence-worker-1"
    assert args.broker == ["mqtt://10.0.0.11:1883", "mqtt://10.0.0.12:1883",
                           "mqtt://10.0.0.13:1883"]
    assert args.store.startswith("postgresql://")
    assert args.metrics_http == "127.0.0.1:9108"


def test_the_unit_is_hardened_and_does_not_loop_on_what_a_restart_cannot_fix():
    service = unit()["Service"]
    assert service["User"] == "emfence" and service["User"] != "root"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "Restart": "always",
                       "CapabilityBoundingSet": ""}.items():
        assert service[key] == value, key
    assert service["RestartPreventExitStatus"].split() == ["4", "5"]
    # TimeoutStopSec above the process's own shutdown bound
    from emfence.run.options import SHUTDOWN_BOUND_S
    assert int(service["TimeoutStopSec"]) > SHUTDOWN_BOUND_S


def _fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def test_the_worked_example_pair_runs_the_same_group_on_both_machines(tmp_path):
    """deploy/systemd/README.md: its environment file makes a command line `emfence run`
    accepts (a worker group on PostgreSQL, every node of the broker given), and its
    configuration file is one the loader takes, with the TTL it talks about."""
    from emfence.config import load_config

    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    env_block = next(b for b in _fenced(text, "sh") if b.startswith("EMFENCE_BROKERS="))
    env = dict(line.split("=", 1) for line in env_block.splitlines() if line.strip())
    argv = systemd_argv(unit()["Service"]["ExecStart"], "north", env)
    args = build_parser().parse_args(argv[2:])
    assert args.name == "north" and args.username == "emfence-north"
    assert args.store.startswith("postgresql://") and len(args.broker) == 3
    assert args.metrics_http == "0.0.0.0:9108"
    toml = tmp_path / "emfence.toml"
    toml.write_text(_fenced(text, "toml")[0], encoding="utf-8")
    assert load_config(toml).ha.lease_ttl_s == 10
