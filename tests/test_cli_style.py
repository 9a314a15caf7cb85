"""One CLI style: every `stori` command answers --help, takes --config, and spells its options like
LightningCLI (underscores, ``--flag true``, ``--name+ VALUE``); `stori --help` lists every command."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stori_pl.cli import LIGHTNING_COMMANDS, UTILITY_COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w.+<>-]*")


def help_text(command: str, capsys) -> str:
    """``stori COMMAND --help`` run in-process (argparse exits with status 0)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(UTILITY_COMMANDS))
def test_utility_help_one_flag_style(command, capsys):
    text = help_text(command, capsys)
    assert text.startswith(f"usage: stori {command}")
    options = set(OPTION.findall(text))
    assert "--config" in options and len(options) > 2
    hyphenated = sorted(o for o in options if "-" in o[2:])
    assert not hyphenated, f"stori {command}: options with hyphens (use underscores): {hyphenated}"


@pytest.mark.parametrize("command", sorted(LIGHTNING_COMMANDS))
def test_lightning_help(command, capsys):
    text = help_text(command, capsys)
    assert "--config" in text and "--trainer.max_epochs" in text and "--model" in text and "--data" in text


CONFIGS = {  # command: (config file content, other arguments, expected parsed values)
    "embed": ({"start_block": 3, "method": "prompt_weighting"}, ["a (red:1.5) car"],
              {"prompt": "a (red:1.5) car", "start_block": 3, "method": "prompt_weighting"}),
    "retrieve": ({"images": "photos", "prompts": ["a (red:2) car"]}, ["--top_k", "5"],
                 {"prompts": ["a (red:2) car"], "top_k": 5}),
    "retrieval-eval": ({"root": "data", "top_k": [3], "tensorboard": True}, ["--weights+", "2.0"],
                       {"top_k": [3], "tensorboard": True, "weights": [0.5, 1.5, 2.0]}),
    "explain": ({"top": 4, "classes": ["banded"]}, ["last.ckpt", "--classes+", "striped"],
                {"ckpt": "last.ckpt", "top": 4, "classes": ["banded", "striped"]}),
    "bench": ({"n_prompts": 5, "skip_memory": True}, ["--repeats", "2"],
              {"n_prompts": 5, "skip_memory": True, "repeats": 2}),
    "report": ({"metric": "test/loss"}, ["runs/"], {"metric": "test/loss", "runs": ["runs/"]}),
    "toy-pretrain": ({"steps": 2, "bf16": False}, ["--seed", "3"], {"steps": 2, "bf16": False, "seed": 3}),
}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_config_file_sets_options(command, tmp_path):
    """``--config FILE`` (jsonargparse ActionConfigFile) fills the options; the command line adds to it."""
    content, argv, expected = CONFIGS[command]
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump(content))
    cfg = build_parser(command).parse_args(["--config", str(path), *argv])
    assert {k: cfg[k] for k in expected} == {k: list(v) if isinstance(v, list) else v for k, v in expected.items()}


def test_cache_config_is_the_training_config():
    """`stori cache --config` names training configs (repeatable, like `stori fit`), not its own options."""
    cfg = build_parser("cache").parse_args(["--config", "dtd_16shot", "-c", "extra.yaml", "--batch_size", "8"])
    assert cfg.config == ["dtd_16shot", "extra.yaml"] and cfg.batch_size == 8


def test_lists_and_booleans_lightning_style():
    parser = build_parser("retrieve")
    cfg = parser.parse_args(["--images", "x", "--prompts+", "a photo: (red:1.5) car", "--prompts+", "[b] c"])
    assert cfg.prompts == ["a photo: (red:1.5) car", "[b] c"]  # `+` values are strings, never YAML
    assert parser.parse_args(["--images", "x", "--prompts", "[a, b]"]).prompts == ["a", "b"]
    import argparse

    with pytest.raises(argparse.ArgumentError):  # exit_on_error=False: `stori` prints it as one line
        parser.parse_args(["--images", "x", "--prompts+", "a", "--start-block", "3"])  # no hyphen aliases


def test_stori_help_lists_every_command_without_importing_them():
    code = ("import sys; from stori_pl.cli import main; main(['--help']); "
            "print('LOADED', sorted(m for m in sys.modules if m.startswith(('stori_pl.cli.', 'lightning', 'jsonargparse'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         check=True).stdout
    text, loaded = out.split("LOADED")
    assert loaded.strip() == "[]"  # no command module, no Lightning, no jsonargparse
    for name, module in UTILITY_COMMANDS.items():
        path = REPO / (module.replace(".", "/") + ".py")
        first = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))).splitlines()[0]
        assert re.search(rf"^  {re.escape(name)} +{re.escape(first)}$", text, re.M), name
    for name, summary in LIGHTNING_COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(summary)}$", text, re.M) and summary
