"""The ``stori`` command: LightningCLI (fit/validate/test/predict) plus utility commands."""

from __future__ import annotations

import importlib
import sys

# name -> module with ``main(argv: list[str]) -> int``; imported lazily so `stori --help` stays fast.
UTILITY_COMMANDS = {
    "embed": "stori_pl.commands.embed",
    "retrieve": "stori_pl.commands.retrieve",
    "retrieval-eval": "stori_pl.commands.retrieval_eval",
    "explain": "stori_pl.commands.explain",
    "bench": "stori_pl.commands.bench",
    "report": "stori_pl.commands.report",
    "cache": "stori_pl.commands.cache",
    "toy-pretrain": "stori_pl.commands.toy_pretrain",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stori`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in UTILITY_COMMANDS:
        module = importlib.import_module(UTILITY_COMMANDS[argv[0]])
        return int(module.main(argv[1:]) or 0)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from stori_pl.lightning_cli import run_lightning_cli

        return int(run_lightning_cli(argv) or 0)
    _print_usage()
    return 0 if not argv or argv[0] in ("-h", "--help") else 2


def _print_usage() -> None:
    names = ", ".join(list(LIGHTNING_COMMANDS) + list(UTILITY_COMMANDS))
    print(f"usage: stori <command> [options]\n\ncommands: {names}\n\n`stori <command> --help` for details.")
