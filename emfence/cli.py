"""The `emfence` command: one console script, one subcommand per job.

Each subcommand lives in the module that owns the work and exposes
``main(argv: list[str]) -> int``; it builds its own argparse parser with
``prog="emfence <name>"``. Modules are imported only when their subcommand runs, so
``emfence --help`` stays fast and a missing optional extra breaks only its own command.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, one-line help). Two-word commands ("zones import-adcode") are
# dispatched by their first word to a module that handles its own second word.
COMMANDS: dict[str, tuple[str, str]] = {
    "zones": ("geofence.cli", "zone files: import-adcode (real county boundaries), check"),
    "replay": ("emfence.replay_store",
               "run the rules over a file of fixes (with the register of a period: --store)"),
    "run": ("emfence.run.cli", "the live engine: MQTT in, alarms to the store and MQTT out"),
    "mqtt-passwords": ("ingest.passwords", "build a mosquitto password file for a subjects file"),
    "retire-session": ("ingest.retire", "discard a retired engine worker's broker session"),
    "simulate": ("simulators.cli", "publish like bracelet firmware; or --generate a test fleet"),
    "score": ("simulators.score", "compare alarms against a simulator's ground truth"),
    "console": ("console.service", "the operators' web console on its own, over a shared store"),
    "user": ("console.users", "console accounts: add, list, disable, enable, password, role, lang"),
    "register": ("alarms.register_cli", "the supervision register in a store: import, export"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: emfence <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `emfence <command> --help` for a command's options."]
    return "\n".join(lines)


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from emfence import __version__

        print(f"emfence {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"emfence: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the one place a closed pipe and Ctrl-C are turned into an exit code."""
    try:
        rc = _dispatch(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output went away (`emfence score ... | head -3`): nothing to
        # report, and no traceback. Python flushes stdout once more at exit; aim it at
        # /dev/null so that flush does not raise again. Exit 1: the output was cut short.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Ctrl-C in a command that does not handle it itself: stop without a traceback.
        return 130
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
