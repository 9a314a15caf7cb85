"""Import aliases for the module paths of stori-pl 0.1 (before the regrouping into subpackages).

Run folders and checkpoints written by 0.1 name classes by their old paths (``config.yaml``:
``stori_pl.callbacks.WeightPlotCallback``, ``stori_pl.data.toy.ToyShapes``, ...). A finder at the front of
``sys.meta_path`` maps each old name (and its submodules: ``stori_pl.commands.embed``) to the new module
object, so such files keep loading and old and new names give the same classes. No old name is a real
module any more, so the finder never shadows one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "stori_pl.clip": "stori_pl.text.clip",
    "stori_pl.reweight": "stori_pl.text.encoder",
    "stori_pl.prompts": "stori_pl.text.syntax",
    "stori_pl.prompt_weighting": "stori_pl.text.prompt_weighting",
    "stori_pl.features": "stori_pl.data.features",
    "stori_pl.attribution": "stori_pl.interpret.attribution",
    "stori_pl.viz": "stori_pl.interpret.viz",
    "stori_pl.callbacks": "stori_pl.lightning.callbacks",
    "stori_pl.compare": "stori_pl.lightning.callbacks",
    "stori_pl.predict": "stori_pl.lightning.prediction_writer",
    "stori_pl.lightning_cli": "stori_pl.lightning.cli",
    "stori_pl.retrieval_runner": "stori_pl.retrieval.runner",
    "stori_pl.data.attributes": "stori_pl.retrieval.attributes",
    "stori_pl.data.toy": "stori_pl.toy.data",
    "stori_pl.data.toy_world": "stori_pl.toy.world",
    "stori_pl.toy_train": "stori_pl.toy.pretrain",
    "stori_pl.quickstart": "stori_pl.toy.quickstart",
    "stori_pl.commands": "stori_pl.cli",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers an old module path (``stori_pl.callbacks``, ``stori_pl.commands.embed``) with its new module."""

    def find_spec(self, fullname: str, path=None, target=None):
        for old, new in MOVED.items():
            if fullname == old or fullname.startswith(old + "."):
                return importlib.util.spec_from_loader(fullname, _AliasLoader(new + fullname[len(old):]))
        return None


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
