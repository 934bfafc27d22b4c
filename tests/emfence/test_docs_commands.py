"""Every command shown in the README and docs/ (fenced ``sh`` blocks) still parses: an
`emfence` command by its subcommand's own argparse parser, `make` by the Makefile's
targets, and every repository file a command names exists. Docs cannot drift from the
command line unnoticed."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from contract import TOPIC_PREFIX
from emfence.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders of this repository: an argument starting with one names a file that must exist.
REPO_DIRS = ("deploy/", "docs/", "tests/", "benchmarks/", "geofence/", "engine/", "ingest/",
             "alarms/", "console/", "simulators/", "emfence/", "contract/")


def _commands(doc: Path) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every command in the document's ``sh`` blocks."""
    out = []
    text = doc.read_text(encoding="utf-8")
    for block in re.finditer(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        first_line = text[:block.start()].count("\n") + 2
        body = re.sub(r"\\\n", " ", block.group(1))
        for i, line in enumerate(body.splitlines()):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{doc.name}:{first_line + i}: {exc}: {line}") from None
            # one command per segment of && ; |
            cmd: list[str] = []
            for w in [*words, ";"]:
                if w in ("&&", ";", "|", "||"):
                    if cmd:
                        out.append((f"{doc.relative_to(ROOT)}:{first_line + i}", cmd))
                    cmd = []
                elif w.startswith((">", "<", "2>")) or (cmd and cmd[-1] in (">", "<")):
                    continue
                else:
                    cmd.append(w)
    return out


ALL = [c for doc in DOCS for c in _commands(doc)]


class _Parsed(Exception):
    pass


def _parse_emfence(argv: list[str]) -> None:
    """Run the subcommand's own parser on ``argv`` and stop right after it parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    name = argv[0]
    assert name in COMMANDS, f"unknown command {name!r}"
    module = importlib.import_module(COMMANDS[name][0])
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        module.main(argv[1:])
    except _Parsed:
        return
    except SystemExit as exc:
        raise AssertionError(f"argparse refused it (exit {exc.code})") from None
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError("the subcommand returned without parsing its arguments")


def _optional_brackets(argv: list[str]) -> list[str]:
    """``[--config C.toml]`` in docs means "may be given": parse it as given."""
    return [w.strip("[]") for w in argv if w.strip("[]")]


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):", text, re.MULTILINE)}


def test_docs_show_commands():
    assert len([c for c in ALL if c[1][0] == "emfence"]) >= 19


@pytest.mark.parametrize("where,argv", ALL, ids=[w for w, _ in ALL])
def test_documented_command_parses(where, argv, capsys):
    argv = _optional_brackets(argv)
    assert "..." not in argv, f"{where}: an elided command cannot be run as written: {argv}"
    for word in argv:  # a file of this repository that a command names exists
        path = word.split("=", 1)[-1]
        if (path.startswith(REPO_DIRS) and not path.startswith(TOPIC_PREFIX)  # MQTT topics
                and "..." not in path and "*" not in path):
            assert (ROOT / path).exists(), f"{where}: {path} does not exist"
    prog = argv[0]
    if prog in ("emfence", ".venv/bin/emfence"):
        try:
            _parse_emfence(argv[1:])
        except AssertionError as exc:
            raise AssertionError(f"{where}: {shlex.join(argv)}: {exc}\n"
                                 f"{capsys.readouterr().err}") from None
    elif prog == "make":
        assert set(argv[1:]) <= _make_targets(), f"{where}: no such make target: {argv}"
    elif prog == "python" and argv[1:2] == ["-m"]:
        assert importlib.util.find_spec(argv[2].split(".")[0]), f"{where}: no module {argv[2]}"


def test_help_texts_have_no_raw_markup():
    for name in COMMANDS:
        proc = subprocess.run([sys.executable, "-m", "emfence", name, "--help"],
                              capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr)
        assert "``" not in proc.stdout, (name, proc.stdout)
