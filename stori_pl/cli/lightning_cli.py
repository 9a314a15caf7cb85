"""`stori fit|validate|test|predict`: LightningCLI with stori-pl's defaults.

- ``--model StoriClassifier|ZeroShotCLIP|TaskRes`` and ``--data DTD|ImageNet|...|ImageFolder``;
  ``model.clip_model`` / ``model.pretrained`` are linked into the datamodule (written once).
- ``--config dtd_16shot.yaml`` works from any folder: a name that is not an existing file resolves to
  the configs shipped in ``stori_pl/configs/`` (the CLI says which file it used): ``coop/dtd_16shot`` is
  CoOp's, a bare ``dtd_16shot`` SToRI's (``configs/stori/``).
- TensorBoard logging under ``runs/``, the resolved config saved with each run, a checkpoint callback
  selecting on the few-shot **val** accuracy (never test) and keeping ``last.ckpt``;
  ``fit --ckpt_path last`` resumes the newest run of that config in place.
- ``--data.subsample_classes base`` (CoCoOp's base-to-novel protocol): every test on the base classes is
  followed by one on the new classes (models that :attr:`~stori_pl.models.ClipClassifier.supports_new_classes`);
  ``test_results.json`` then holds ``base_acc``, ``new_acc`` and their harmonic mean ``hm`` too.
- After ``fit``, the model is tested (``--test_after_fit false`` to skip): ``--test_ckpt last`` the weights
  after the last epoch (Dassl's ``TEST.FINAL_MODEL = "last_step"``, what the paper configs use), ``best`` the
  checkpoint selected on val. Every test writes ``test_results.json`` (with the wall time of the run) into the
  run folder (read by ``stori report``).
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from stori_pl.models.checkpoint import (
    AtomicCheckpointIO,
    check_checkpoint,
)
import stori_pl.data  # noqa: F401  (the datamodules for --data NAME)
import stori_pl.models  # noqa: F401  (the models for --model NAME)
import stori_pl.toy.data  # noqa: F401  (ToyShapes; the toy world registers its image source and ground truth)
from stori_pl.cli.lightning_args import prepare_argv
from stori_pl.lightning.prediction_writer import PredictionCSVWriter
from stori_pl.lightning.results import base_to_novel, write_results
from stori_pl.lightning.run_guard import (
    SIGTERM_STATUS,
    RunConfigError,
    RunLock,
    check_ckpt_option,
    check_epochs,
    parse_error_line,
    release_all,
    remove_if_empty_run,
)


class ReproducibleEpochs(L.Callback):
    """Derive each training epoch's shuffling (and RNG state) from (seed, epoch) alone, so that
    ``--ckpt_path last`` ends exactly where an uninterrupted run ends.

    The train sampler gets its own generator seeded per epoch (Lightning creates a resumed run's first
    iterator before ``on_train_epoch_start``; the sampler draws its order lazily, after this hook).
    DDP's ``DistributedSampler`` is already seeded by (seed, epoch) and is left alone.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = (int(os.environ.get("PL_GLOBAL_SEED", 0)) * 100_003 + trainer.current_epoch) % (2**31)
        random.seed(seed)
        torch.manual_seed(seed)
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, torch.utils.data.RandomSampler):
                sampler.generator = torch.Generator().manual_seed(seed)


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` after every validation (Lightning 2.6's ``save_last`` only does so when the
    monitored checkpoint improved, which would make ``--ckpt_path last`` lose epochs)."""

    def __init__(self) -> None:
        super().__init__(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


class StoriCLI(LightningCLI):
    """LightningCLI for stori-pl (see the module docstring)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self.started = time.monotonic()  # for the wall time in test_results.json
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"] = {
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "stori"}},
            "callbacks": [ReproducibleEpochs(), LastCheckpoint()],
            **kwargs["trainer_defaults"],
        }
        try:
            self._init_cli(args, run, **kwargs)
        except OSError as err:  # TensorBoard's event writer raises a full disk without a file name: name it
            _name_event_file(err, getattr(self, "trainer", None))
            raise

    def _init_cli(self, args: list[str] | None, run: bool, **kwargs: Any) -> None:
        super().__init__(
            model_class=L.LightningModule,  # the classifiers (ClipClassifier) and SparseAutoencoder
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "stori", "description": "SToRI few-shot classification (LightningCLI)",
                           "exit_on_error": False},  # a parse error: one line (run_guard.parse_error_line)
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.init_args.clip_model", "data.init_args.clip_model")
        parser.link_arguments("model.init_args.pretrained", "data.init_args.pretrained")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # LastCheckpoint writes last.ckpt every epoch
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(PredictionCSVWriter, "prediction_writer")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit only: test the model after training")
        parser.add_argument("--test_ckpt", type=Literal["last", "best"], default="best",
                            help="fit only: which model the test after training uses: 'last' = the weights after "
                                 "the last epoch (Dassl, the paper configs), 'best' = the checkpoint selected on val")

    # ------------------------------------------------------------------------------------- resume
    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path last`` (``fit`` continues in that run's folder), check the checkpoint is
        readable, and claim a fresh ``version_N`` folder for every other run (see :func:`claim_run_version`)."""
        sub = self.config[self.subcommand] if self.subcommand else self.config
        if sub.get("checkpoint") is not None:
            sub.checkpoint.save_last = False  # LastCheckpoint always writes last.ckpt (every epoch)
        if not self.subcommand:
            return
        init, run_dir = _logger_run_dir(sub)
        if sub.get("ckpt_path") == "last" and run_dir is not None:
            self._resolve_last(sub, init, run_dir)
        ckpt = sub.get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt):
            if not Path(ckpt).is_file():
                raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint file")
            check_checkpoint(ckpt)
        check_epochs(sub.get("trainer"), sub.get("ckpt_path"), self.subcommand)
        if run_dir is not None and init.get("version") is None:
            init["version"] = claim_run_version(run_dir)
        if run_dir is not None and self.subcommand == "fit" and _launching_process():
            RunLock(run_dir / f"version_{init['version']}").acquire()  # one fit per run folder

    def _resolve_last(self, sub: Any, init: Any, run_dir: Path) -> None:
        """``--ckpt_path last``: the ``last.ckpt`` of the newest run of this name."""
        found = sorted(run_dir.glob("version_*/checkpoints/last.ckpt"), key=lambda p: _version_number(p.parents[1]))
        if not found:
            if self.subcommand != "fit":
                raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {run_dir}/version_*/checkpoints")
            print(f"stori: no last.ckpt under {run_dir}/version_*/checkpoints: training from scratch", file=sys.stderr)
            sub.ckpt_path = None
            return
        sub.ckpt_path = str(found[-1])
        if self.subcommand == "fit":
            init["version"] = _version_number(found[-1].parents[1])
        print(f"stori: using {found[-1]}", file=sys.stderr)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, writing checkpoints atomically (:class:`AtomicCheckpointIO`) unless configured otherwise."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    # --------------------------------------------------------------------------------- after runs
    def after_fit(self) -> None:
        if not self.config["fit"].get("test_after_fit", True) or self.trainer.interrupted:
            return
        # the explicit path of the val-selected checkpoint (ckpt_path="best" warns when, as here, there are
        # several ModelCheckpoint callbacks)
        selected = [cb for cb in self.trainer.checkpoint_callbacks
                    if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and cb.best_model_path]
        use_best = self.config["fit"].get("test_ckpt", "best") == "best"
        ckpt = None if self.trainer.fast_dev_run or not selected or not use_best else selected[0].best_model_path
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)  # None: the final weights
        self.after_test()

    def _tested(self) -> str:
        """``last`` (the weights after the last epoch), ``best`` (selected on val) or ``given`` (``--ckpt_path``)."""
        if self.subcommand == "fit":
            return self.config["fit"].get("test_ckpt", "best")
        return "given" if self.trainer.ckpt_path else "last"

    def test_new_classes(self) -> dict[str, float] | None:
        """Base-to-novel: after a test on ``subsample_classes: base``, test the same weights on the new classes.

        Returns the new classes' ``test/*`` metrics, or None when the datamodule is not on the base classes or
        the model learns per-class parameters (:attr:`ClipClassifier.supports_new_classes`).
        """
        dm, model = self.datamodule, self.trainer.lightning_module
        if getattr(dm, "subsample_classes", "all") != "base" or not getattr(model, "supports_new_classes", False):
            return None
        ckpt = self.trainer.ckpt_path
        self.trainer.test(model, datamodule=dm.with_subsample("new"), ckpt_path=ckpt)
        return {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}

    def after_test(self) -> None:
        trainer = self.trainer
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        tested_ckpt = trainer.ckpt_path
        new = self.test_new_classes()  # on every rank (a test is a collective under DDP)
        if not trainer.is_global_zero or trainer.log_dir is None:
            return
        model, dm = trainer.lightning_module, self.datamodule
        result = {
            "method": type(model).__name__,
            "method_name": getattr(model, "method_name", type(model).__name__),
            "dataset": type(dm).__name__ if dm is not None else None,
            "shots": getattr(dm, "shots", None),
            "seed": getattr(dm, "seed", None),
            "clip_model": model.hparams.get("clip_model"),
            "pretrained": model.hparams.get("pretrained"),
            "ckpt_path": str(tested_ckpt) if tested_ckpt else None,
            "test_ckpt": self._tested(),
            "wall_time_s": round(time.monotonic() - self.started, 3),
            "metrics": metrics,
            "subsample_classes": getattr(dm, "subsample_classes", "all"),
        }
        if new is not None and "test/acc" in metrics and "test/acc" in new:
            result.update(base_to_novel(metrics["test/acc"], new["test/acc"]), metrics_new=new)
        path = write_results(trainer.log_dir, result)
        print(f"stori: test results written to {path}")


def _version_number(path: Path) -> int:
    m = re.match(r"version_(\d+)$", path.name)
    return int(m.group(1)) if m else -1


RUN_DIR_ENV = "STORI_RUN_DIR"  # the folder rank 0 claimed, inherited by the DDP ranks it launches


def _logger_run_dir(sub: Any) -> tuple[Any, Path | None]:
    """The logger's ``init_args`` and ``<save_dir>/<name>`` for a TensorBoard/CSV logger, else ``(None, None)``."""
    trainer = sub.get("trainer")
    logger = trainer.get("logger") if hasattr(trainer, "get") else None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or not str(logger.get("class_path", "")).endswith(("TensorBoardLogger", "CSVLogger")):
        return None, None
    return init, Path(init.get("save_dir") or ".") / (init.get("name") or "")


def claim_run_version(run_dir: str | os.PathLike) -> int:
    """Create ``run_dir/version_N`` (N one past the highest existing) with an exclusive ``os.mkdir``.

    Two runs started together never get the same folder: the loser of a race sees ``FileExistsError``
    and tries the next number. DDP ranks > 0 reuse the folder their rank 0 claimed.

    Returns:
        N, for the logger's ``version`` argument.
    """
    run_dir = Path(run_dir)
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 and Path(inherited).parent == run_dir:
        return _version_number(Path(inherited))
    run_dir.mkdir(parents=True, exist_ok=True)
    while True:
        n = max((_version_number(p) for p in run_dir.iterdir()), default=-1) + 1
        try:
            os.mkdir(run_dir / f"version_{n}")
        except FileExistsError:
            continue  # another run took it between the listing and the mkdir
        os.environ[RUN_DIR_ENV] = str(run_dir / f"version_{n}")
        return n


def _name_event_file(err: OSError, trainer: L.Trainer | None) -> None:
    """Give a system error without a file name (TensorBoard's writer thread on a full disk: an errno, no file) the
    run's newest event file; errors raised with a message only (``FileNotFoundError("data root …")``) keep it."""
    log_dir = getattr(trainer, "log_dir", None) if err.filename is None and err.errno is not None else None
    if log_dir is not None:
        events = sorted(Path(log_dir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        err.filename = str(events[-1] if events else log_dir)


def _launching_process() -> bool:
    """Whether this is the process that started the run (not a DDP rank > 0, another node or a SLURM task > 0)."""
    return all(int(os.environ.get(v, 0) or 0) == 0 for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _give_back_folder(claimed_before: str | None) -> None:
    """After a failed run: remove the folder it claimed if it holds no result (:func:`remove_if_empty_run`)."""
    claimed = os.environ.get(RUN_DIR_ENV)
    if claimed and claimed != claimed_before and Path(claimed).is_dir():
        remove_if_empty_run(claimed)


def run_lightning_cli(argv: list[str]) -> int:
    """Run ``stori <fit|validate|test|predict> ...``; returns the exit status."""
    import argparse

    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    check_ckpt_option(argv)  # before LightningCLI reads the file (its _parse_ckpt_path)
    argv = prepare_argv(argv)
    with warnings.catch_warnings():
        # we pass args explicitly (sys.argv stays intact: DDP's launcher re-runs it on the other ranks)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        claimed_before = os.environ.get(RUN_DIR_ENV)
        try:
            cli = StoriCLI(args=argv)
        except FloatingPointError as err:
            _give_back_folder(claimed_before)
            print(f"stori: {err}", file=sys.stderr)
            return 1
        except SIGTERMException:  # Lightning stopped at a batch or epoch end; last.ckpt is the last whole epoch
            print("stori: SIGTERM received: stopped; resume with --ckpt_path last (exit status 143)", file=sys.stderr)
            return SIGTERM_STATUS
        except BaseException as err:
            _give_back_folder(claimed_before)
            if isinstance(err, argparse.ArgumentError):
                raise RunConfigError(parse_error_line(str(err))) from None
            if isinstance(err, MisconfigurationException):
                raise RunConfigError(str(err).strip().splitlines()[0]) from err
            raise
        finally:
            release_all()
    trainer = getattr(cli, "trainer", None)
    if trainer is not None and getattr(trainer, "received_sigterm", False):
        print("stori: SIGTERM received: stopped; resume with --ckpt_path last (exit status 143)", file=sys.stderr)
        return SIGTERM_STATUS
    return 0


__all__ = ["StoriCLI", "run_lightning_cli", "ReproducibleEpochs", "claim_run_version"]
