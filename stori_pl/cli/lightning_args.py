"""The command line of `stori fit|validate|test|predict` before LightningCLI sees it (:func:`prepare_argv`):
``--config`` names resolved to the shipped configs, unknown ``--model`` / ``--data`` names and a ``--model``
that does not match its config refused with one clear line, the model class taken from ``--ckpt_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import stori_pl.data
import stori_pl.models
from stori_pl.models.checkpoint import check_checkpoint

RUN_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def prepare_argv(argv: list[str]) -> list[str]:
    """``argv`` with its configs resolved (:func:`resolve_config`) and checked, plus the checkpoint's model class.

    Raises:
        SystemExit: A config not found, or an unknown ``--model`` / ``--data`` name (one line listing the valid ones).
        ValueError: ``--model`` names another method than its config.
    """
    argv = resolve_config_args(argv)
    check_names(argv)
    check_model_matches_config(argv)
    return model_from_checkpoint(argv)


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package (``demo.yaml``, ``coop/dtd_16shot.yaml``, ...)."""
    return sorted(p.relative_to(RUN_CONFIG_DIR).as_posix() for p in RUN_CONFIG_DIR.rglob("*.yaml"))


def resolve_config(value: str) -> str:
    """An existing path unchanged; else a shipped config: ``coop/dtd_16shot(.yaml)`` is that method's,
    a bare ``dtd_16shot(.yaml)`` SToRI's (``configs/stori/``) unless a top-level file has the name (``demo``)."""
    if Path(value).expanduser().exists():
        return value
    name = value[: -len(".yaml")] if value.endswith(".yaml") else value
    for candidate in (f"{name}.yaml", f"stori/{name}.yaml"):
        if (RUN_CONFIG_DIR / candidate).is_file():
            path = str(RUN_CONFIG_DIR / candidate)
            print(f"stori: using the shipped config {path}", file=sys.stderr)
            return path
    import difflib

    close = difflib.get_close_matches(f"{name}.yaml", shipped_configs(), n=5, cutoff=0.6)
    raise SystemExit(
        f"stori: config {value!r} not found, neither as a file nor among the {len(shipped_configs())} shipped "
        f"configs (configs/<method>/<dataset>_<k>shot.yaml{'; close: ' + ', '.join(close) if close else ''})"
    )


def config_model(argv: list[str]) -> tuple[str, str] | None:
    """``(config file, model class name)`` of the last ``--config`` that has a ``model`` section."""
    import yaml

    found = None
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path and Path(path).is_file():
            try:
                cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as err:  # e.g. a !!python/object/apply tag: never run
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"config {path} is not plain YAML ({first}); Python tags are refused") from None
            model = cfg.get("model") if isinstance(cfg, dict) else None
            if isinstance(model, dict) and model.get("class_path"):
                found = (path, str(model["class_path"]).rsplit(".", 1)[-1])
    return found


def check_model_matches_config(argv: list[str]) -> None:
    """``--model X`` with a config written for another method would mix their arguments: refuse it."""
    model, config = option(argv, "--model"), config_model(argv)
    if not model or not config or model.startswith(("{", "[")):
        return
    name = model.rsplit(".", 1)[-1]
    if name != config[1]:
        raise ValueError(
            f"--model {model}: the config {config[0]} is written for {config[1]} (its model arguments and recipe "
            f"belong to that method); use that method's config (configs/<method>/...) or drop --model")


def resolve_config_args(argv: list[str]) -> list[str]:
    """A copy of ``argv`` with each ``--config`` / ``-c`` value passed through :func:`resolve_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


def option(argv: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``argv`` (``name value`` or ``name=value``; the first one), or None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_names(argv: list[str]) -> None:
    """Unknown ``--model`` / ``--data`` names → the list of valid ones (before jsonargparse's message)."""
    known = {
        "--model": [n for n in stori_pl.models.__all__ if isinstance(getattr(stori_pl.models, n), type)
                    and n != "ClipClassifier"],
        "--data": [n for n in stori_pl.data.__all__ if n not in ("FewShotDataModule", "PromptSet", "FeatureDataset")]
        + ["ToyShapes", "ToyShapesSpurious", "ToyKinds"],
    }
    for flag, names in known.items():
        value = option(argv, flag)
        if value and "." not in value and value not in names and not value.startswith(("{", "[")):
            raise SystemExit(f"stori: unknown {flag[2:]} {value!r}; choose one of: {', '.join(names)}")


def model_from_checkpoint(argv: list[str]) -> list[str]:
    """Check a ``--ckpt_path`` file now (unreadable, or naming a class this stori-pl does not have: one line), and
    for ``stori predict --ckpt_path X`` without ``--model``/``--config`` take the model class from it."""
    ckpt = option(argv, "--ckpt_path")
    if not ckpt or not Path(ckpt).is_file():
        return argv
    info = check_checkpoint(ckpt).get("stori") or {}
    if option(argv, "--model") or option(argv, "--config") or option(argv, "-c"):
        return argv
    if not info.get("model"):
        return argv
    extra = [f"--model={info['model']}", f"--model.clip_model={info['clip_model']}",
             f"--model.pretrained={info['pretrained']}"]
    return argv[:1] + extra + argv[1:]
