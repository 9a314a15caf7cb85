"""Helpers shared by the ``stori`` utility commands: a parser built from one function's signature.

Every utility command is a plain function with type hints and a Google docstring; its parser is made by
:func:`function_parser`, so the signature and the docstring are the command-line interface (options named
like the parameters, ``--start_block``; booleans ``--flag true``; lists ``--name+ VALUE`` or
``--name '[a, b]'``), and ``--config FILE`` reads any of the options from YAML/JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from jsonargparse import (
    ActionConfigFile,
    ArgumentParser,
    DefaultHelpFormatter,
    Namespace,
)

CONFIG_HELP = "YAML/JSON file with any of the options below (options given after it override it)."
OVERRIDE_SECTIONS = ("data", "model")  # the config sections `--data.<arg>` / `--model.<arg>` override
OVERRIDES_EPILOG = ("Overrides of the training config, as for `stori fit`: --data.<arg> VALUE / --model.<arg> VALUE\n"
                    "(e.g. --data.root /data --model.pretrained openai).")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help formatter that keeps the description's line breaks (for the examples)."""


def command_parser(prog: str, doc: str | None, config: bool = True) -> ArgumentParser:
    """An empty parser for a ``stori`` command: ``doc`` (the module docstring) as description, ``--config``.

    Args:
        prog: Program name shown in usage lines, e.g. ``"stori embed"``.
        doc: Description shown by ``--help`` (line breaks kept).
        config: Add ``--config FILE`` (jsonargparse's ``ActionConfigFile``).
    """
    # exit_on_error=False: a parse error raises ArgumentError, which `stori` prints as one line (no usage dump)
    p = ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter, exit_on_error=False)
    if config:
        p.add_argument("--config", action=ActionConfigFile, help=CONFIG_HELP)
    return p


def function_parser(fn: Callable, prog: str, doc: str | None, *, positional: bool = True,
                    skip: set[str] | None = None) -> ArgumentParser:
    """Parser whose options are ``fn``'s parameters (types, defaults, help from its Google docstring).

    Args:
        fn: The command's function.
        prog: Program name, e.g. ``"stori embed"``.
        doc: Description (the command module's docstring).
        positional: Parameters without a default become positional arguments (else required options).
        skip: Parameters not added (the caller adds them itself).
    """
    p = command_parser(prog, doc)
    p.add_function_arguments(fn, as_positional=positional, skip=skip)
    return p


def parameter_help(fn: Callable, name: str) -> str:
    """The description of parameter ``name`` in ``fn``'s Google docstring (for arguments added by hand)."""
    import docstring_parser

    return next((p.description or "" for p in docstring_parser.parse(fn.__doc__ or "").params if p.arg_name == name), "")


def function_kwargs(parser: ArgumentParser, cfg: Namespace, drop: tuple[str, ...] = ("config",)) -> dict[str, Any]:
    """Keyword arguments for the command's function from a parsed ``cfg`` (classes instantiated).

    Args:
        parser: The parser that made ``cfg``.
        cfg: Parsed options.
        drop: Options that are not parameters of the function (``--config FILE`` by default).
    """
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # jsonargparse >= 4.49
    cfg = instantiate(cfg)
    return {k: v for k, v in vars(cfg).items() if k not in (*drop, "__path__")}


def run_function(fn: Callable[..., Any], parser: ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` with ``parser`` and call ``fn`` with the options; returns its exit status (``fn``'s
    integer result, 0 when it returns something else: a library function's result object)."""
    cfg = parser.parse_args(argv)
    status = fn(**function_kwargs(parser, cfg))
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``--data.<arg> VALUE`` / ``--model.<arg>=VALUE`` overrides from the command's own options.

    Returns:
        ``(other arguments, {"data.root": "/data", ...})``.

    Raises:
        ValueError: A dotted option of another section (e.g. ``--trainer.devices``), or one without a value.
    """
    rest, out, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if not (arg.startswith("--") and "." in name):
            rest.append(arg)
        elif name.split(".", 1)[0] not in OVERRIDE_SECTIONS:
            raise ValueError(f"unknown option --{name} (use --data.<arg> or --model.<arg>; "
                             "--accelerator and --devices for the trainer)")
        elif "=" in arg:
            out[name] = arg.split("=", 1)[1]
        elif i + 1 < len(argv):
            out[name], i = argv[i + 1], i + 1
        else:
            raise ValueError(f"option {arg} needs a value")
        i += 1
    return rest, out


def config_command_parser(fn: Callable, prog: str, doc: str | None) -> ArgumentParser:
    """The parser of a command run on a training config (``stori cache``, ``stori attributes``).

    ``fn`` takes ``config`` (a list: ``--config`` / ``-c``, required, repeatable) and ``overrides`` (the
    ``--data.*`` / ``--model.*`` options, split off by :func:`run_config_command`, not parsed here); its other
    parameters become options as in :func:`function_parser`.

    Args:
        fn: The command's function.
        prog: ``"stori <command>"``.
        doc: The module docstring (the description).
    """
    p = command_parser(prog, doc, config=False)
    p.add_argument("--config", "-c", action="append", type=str, required=True, help=parameter_help(fn, "config"))
    p.add_function_arguments(fn, skip={"config", "overrides"})
    p.epilog = OVERRIDES_EPILOG
    return p


def run_config_command(fn: Callable[..., int], parser: ArgumentParser, argv: list[str] | None) -> int:
    """Run a command made by :func:`config_command_parser`: ``--data.*`` / ``--model.*`` overrides (see
    :func:`split_overrides`), then the command's own options; returns ``fn``'s exit status.

    Args:
        fn: The command's function (called with the options and ``overrides``).
        parser: Its parser.
        argv: The arguments (default ``sys.argv[1:]``).
    """
    import sys

    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    cfg = parser.parse_args(rest)
    return int(fn(**function_kwargs(parser, cfg, drop=()), overrides=overrides) or 0)
