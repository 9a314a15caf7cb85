"""The ``stori`` command: LightningCLI (fit/validate/test/predict) plus one module per utility command.

Each utility module exposes ``main(argv: list[str]) -> int``; modules are imported lazily so that
``stori --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

UTILITY_COMMANDS = {
    "embed": "stori_pl.cli.embed",
    "retrieve": "stori_pl.cli.retrieve",
    "retrieval-eval": "stori_pl.cli.retrieval_eval",
    "explain": "stori_pl.cli.explain",
    "explain-eval": "stori_pl.cli.explain_eval",
    "bench": "stori_pl.cli.bench",
    "report": "stori_pl.cli.report",
    "cache": "stori_pl.cli.cache",
    "toy-pretrain": "stori_pl.cli.toy_pretrain",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stori`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in UTILITY_COMMANDS:
        module = importlib.import_module(UTILITY_COMMANDS[argv[0]])
        return int(module.main(argv[1:]) or 0)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from stori_pl.lightning.cli import run_lightning_cli

        return int(run_lightning_cli(argv) or 0)
    _print_usage()
    return 0 if not argv or argv[0] in ("-h", "--help") else 2


def _print_usage() -> None:
    names = ", ".join(list(LIGHTNING_COMMANDS) + list(UTILITY_COMMANDS))
    print(f"usage: stori <command> [options]\n\ncommands: {names}\n\n`stori <command> --help` for details.")
