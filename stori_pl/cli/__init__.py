"""The ``stori`` command: LightningCLI (fit/validate/test/predict) plus a table of utility commands.

:data:`UTILITY_COMMANDS` maps each command to its module and :data:`COMMAND_FUNCTIONS` to the library-facing
function there: the function's signature and Google docstring are the command's interface (its parser is
built from them, :func:`build_parser`); a module with its own ``build_parser()`` / ``main(argv)`` (report,
grid, toy-pretrain) uses those. Modules are imported only when their command runs, and ``stori --help`` reads
their one-line summaries (the first line of each module's docstring) from the source files, so it imports no
command.

User errors of every command (a missing file or folder, a bad value, an unknown name) end with one line
``stori <command>: error: <message>`` on stderr and exit status 2; ``--traceback`` anywhere on the command
line (or ``STORI_DEBUG=1``) shows the full Python traceback instead. A parse error is one line too (the parsers
raise instead of printing their usage), and so is an OSError about the user's disk or paths (a full disk, a
read-only folder, an output path that is a folder: :data:`ENVIRONMENT_ERRNOS`). Other exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

UTILITY_COMMANDS = {
    "embed": "stori_pl.cli.embed",
    "retrieve": "stori_pl.cli.retrieve",
    "retrieval-eval": "stori_pl.cli.retrieval_eval",
    "explain": "stori_pl.cli.explain",
    "explain-eval": "stori_pl.cli.explain_eval",
    "components": "stori_pl.cli.components",
    "components-eval": "stori_pl.cli.components_eval",
    "bench": "stori_pl.cli.bench",
    "report": "stori_pl.cli.report",
    "grid": "stori_pl.cli.grid",
    "cache": "stori_pl.cli.cache",
    "attributes": "stori_pl.cli.attributes",
    "describe": "stori_pl.cli.describe",
    "toy-pretrain": "stori_pl.cli.toy_pretrain",
}
COMMAND_FUNCTIONS = {  # command -> (function of its module, parser: positional / options / config)
    "embed": ("embed", "positional"),
    "retrieve": ("retrieve", "options"),
    "retrieval-eval": ("retrieval_eval", "options"),
    "explain": ("explain", "positional"),
    "explain-eval": ("explain_eval", "positional"),
    "components": ("components", "positional"),
    "components-eval": ("components_eval", "positional"),
    "bench": ("bench", "positional"),
    "cache": ("cache", "config"),  # --config names training configs; --data.* / --model.* override them
    "attributes": ("attributes", "config"),
    "describe": ("describe", "options"),
}
LIGHTNING_COMMANDS = {  # LightningCLI subcommands (stori_pl.cli.lightning_cli) and their one-line summaries
    "fit": "Train a classifier from a config (--config dtd_16shot.yaml), then test the checkpoint chosen on val.",
    "validate": "Few-shot val accuracy of a model or checkpoint (--ckpt_path).",
    "test": "Test accuracy of a model or checkpoint; writes test_results.json into the run folder.",
    "predict": "Classify a folder of images (--data ImageFolder) into a CSV (--prediction_writer.output).",
}
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)
TRACEBACK_FLAG = "--traceback"
# OSErrors that describe the user's disk or paths, not a bug: printed as one line like the user errors
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                      errno.ENOTDIR, errno.ENAMETOOLONG, errno.EFBIG}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stori`` console script; returns the exit status.

    Args:
        argv: Command line without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = TRACEBACK_FLAG in argv or os.environ.get("STORI_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != TRACEBACK_FLAG]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = argv[0]
    if command not in UTILITY_COMMANDS and command not in LIGHTNING_COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\nstori: error: unknown command {command!r}", file=sys.stderr)
        return 2
    try:
        from stori_pl.cli.threads import configure_threads

        configure_threads(argv)  # before torch starts its thread pool: 1 thread for toy models, idle cores else
        with writer_thread_errors_left_to_main():
            return run_command(command, argv[1:])
    except SystemExit as exit_:
        if debug or not isinstance(exit_.code, str):
            raise  # argparse's own exits (status 0 for --help, 2 with its message printed)
        return report_error(command, exit_.code.removeprefix("stori: "))
    except argparse.ArgumentError as err:  # the parsers raise instead of printing their usage (exit_on_error=False)
        if debug:
            raise
        from stori_pl.lightning.run_guard import parse_error_line

        return report_error(command, parse_error_line(str(err)))
    except USER_ERRORS as err:
        if debug or not is_user_error(err):
            raise
        return report_error(command, error_message(err))
    except OSError as err:  # a full disk, a read-only folder, an output path that is a folder: the user's to fix
        if debug or err.errno not in ENVIRONMENT_ERRNOS:
            raise
        return report_error(command, os_error_message(err))


@contextlib.contextmanager
def writer_thread_errors_left_to_main() -> Iterator[None]:
    """Print no traceback for a full disk (or any :data:`ENVIRONMENT_ERRNOS` error) in a background thread.

    TensorBoard writes its event file from a thread; when a write fails there, the thread stores the error and
    the main thread raises it at its next log call or flush, which ``stori`` prints as one line. Only the
    thread's own traceback (printed by :func:`threading.excepthook`) is suppressed; other errors print as usual.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in ENVIRONMENT_ERRNOS):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def run_command(command: str, args: list[str]) -> int:
    """Run one ``stori`` command (no error handling; :func:`main` adds it)."""
    if command in LIGHTNING_COMMANDS:
        from stori_pl.cli.lightning_cli import run_lightning_cli

        return int(run_lightning_cli([command, *args]) or 0)
    module = importlib.import_module(UTILITY_COMMANDS[command])
    if command not in COMMAND_FUNCTIONS:
        return int(module.main(args) or 0)
    from stori_pl.cli.common import run_config_command, run_function

    fn = getattr(module, COMMAND_FUNCTIONS[command][0])
    run = run_config_command if COMMAND_FUNCTIONS[command][1] == "config" else run_function
    return run(fn, build_parser(command), args)


def build_parser(command: str):
    """The jsonargparse parser of utility ``command`` (from its function's signature and docstring, with the
    module docstring as description; or the module's own ``build_parser()``)."""
    from stori_pl.cli.common import config_command_parser, function_parser

    module = importlib.import_module(UTILITY_COMMANDS[command])
    if command not in COMMAND_FUNCTIONS:
        return module.build_parser()
    name, style = COMMAND_FUNCTIONS[command]
    fn, prog = getattr(module, name), f"stori {command}"
    if style == "config":
        return config_command_parser(fn, prog, module.__doc__)
    return function_parser(fn, prog, module.__doc__, positional=style == "positional")


def os_error_message(err: OSError) -> str:
    """``cannot write PATH: No space left on device`` (the file and the system's reason, one line)."""
    what = f" {err.filename}" if err.filename else ""
    hint = " (give a file name, not a folder)" if err.errno == errno.EISDIR else ""
    return f"cannot write{what}: {err.strerror or err}{hint}"


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is meant for the user: one of :data:`USER_ERRORS`, and a KeyError only with a sentence.

    A ``KeyError`` raised by a failed dict lookup carries just the key (a bug); ours carry a message.
    """
    if isinstance(err, KeyError):
        return len(err.args) == 1 and isinstance(err.args[0], str) and " " in err.args[0].strip()
    return isinstance(err, USER_ERRORS)


def error_message(err: BaseException) -> str:
    """The message of ``err`` without the quotes ``str(KeyError)`` adds."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err) or type(err).__name__


def report_error(command: str, message: str) -> int:
    """Print ``stori <command>: error: <message>`` to stderr; returns exit status 2."""
    print(f"stori {command}: error: {message}", file=sys.stderr)
    return 2


def command_summary(command: str) -> str:
    """One-line summary of a command: the first docstring line of its module, read without importing it."""
    if command in LIGHTNING_COMMANDS:
        return LIGHTNING_COMMANDS[command]
    path = Path(__file__).with_name(UTILITY_COMMANDS[command].rsplit(".", 1)[1] + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def usage() -> str:
    """The text of ``stori --help``: every command with its one-line summary."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *UTILITY_COMMANDS])) + 2
    lines = ["usage: stori <command> [options]     (`stori <command> --help` shows a command's options)", "",
             "Training and evaluation (LightningCLI: --config, --model, --data, --trainer.*):"]
    lines += [f"  {name:<{width}}{command_summary(name)}" for name in LIGHTNING_COMMANDS]
    lines += ["", "Utilities (each takes --config FILE with any of its options):"]
    lines += [f"  {name:<{width}}{command_summary(name)}" for name in UTILITY_COMMANDS]
    lines += ["", "Global option:",
              f"  {TRACEBACK_FLAG:<{width}}Show the full Python traceback of an error (or set STORI_DEBUG=1)."]
    return "\n".join(lines)
