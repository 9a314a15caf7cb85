"""Guards around a ``stori fit|validate|test|predict`` run (issue 20): one line instead of a traceback or a usage
dump, one process per run folder, a non-zero exit after SIGTERM, no empty run folders left behind.

- :func:`parse_error_line` turns jsonargparse's multi-line parse error (LightningCLI would print the 78-line
  usage first) into one line naming the option, e.g. ``--model.lr: expected a float, got nan``.
- :func:`check_ckpt_option` reads a ``--ckpt_path FILE`` before LightningCLI does (its ``_parse_ckpt_path``
  loads the file while parsing: an empty or truncated file gave EOFError / OSError tracebacks).
- :func:`check_epochs` refuses ``--trainer.max_epochs`` below 0 (``-1`` would train forever; Lightning refuses
  ``-2`` with a MisconfigurationException) and a resume whose checkpoint is already past ``max_epochs``.
- :class:`RunLock`: ``fit`` holds ``<run folder>/.stori-fit.lock`` (pid, host, start time) while it trains; a
  second ``fit --ckpt_path last`` of the same run refuses in one line naming the holder. A lock whose process
  is gone (same host) is stale and taken over.
- :func:`remove_if_empty_run` deletes a run folder a failed run left holding only ``config.yaml``,
  ``hparams.yaml`` and TensorBoard event files without a single scalar.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from stori_pl.models.checkpoint import check_checkpoint, read_checkpoint

LOCK_NAME = ".stori-fit.lock"
SIGTERM_STATUS = 143  # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM
SPECIAL_CKPT = ("last", "best", "hpc", "registry")


class RunConfigError(ValueError):
    """A run's configuration cannot work (printed by ``stori`` as one line, exit status 2)."""


class RunLockedError(RunConfigError):
    """Another process is training in this run folder."""


# ------------------------------------------------------------------------------------------ parse errors
def parse_error_line(message: str) -> str:
    """One line for jsonargparse's error message ``message`` (which nests the option's path over several lines).

    ``Parser key "model": ... Parser key "lr": Expected a <class 'float'>. Got value: nan`` becomes
    ``--model.lr: expected a float, got nan (numbers must be finite)``; other messages keep their first line.
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    keys = [(i, m.group(1)) for i, line in enumerate(lines) if (m := re.match(r'Parser key "([^"]+)"', line))]
    if not keys:
        line = re.sub(r"<class '([\w.]+)'>", r"\1", lines[0])
        if "constructor for the tag" in line:
            line += " (configs are plain YAML: Python tags are refused, nothing ran)"
        return line
    last = keys[-1][0]
    detail = lines[last].split(":", 1)[1].strip() or (lines[last + 1] if last + 1 < len(lines) else "")
    detail = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", detail).rstrip(".")
    got = re.search(r"Got value: (.+)$", detail)
    if got and got.group(1).strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
        detail += " (numbers must be finite)"
    detail = re.sub(r"^Expected a (\w+)\. Got value: ", r"expected a \1, got ", detail)
    option = ".".join(k for _, k in keys if k not in ("init_args",))
    return f"--{option}: {detail}"


# ------------------------------------------------------------------------------------------ checkpoints
def option_value(argv: list[str], name: str) -> str | None:
    """The last value of option ``name`` (``name value`` or ``name=value``) in ``argv``, or None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def check_ckpt_option(argv: list[str]) -> None:
    """Read ``--ckpt_path FILE`` safely before LightningCLI parses it.

    Raises:
        RunConfigError: A folder.
        UnreadableCheckpointError: Truncated, empty, random or pickle-payload file (one line, listing the run's
            readable checkpoints).
    """
    ckpt = option_value(argv, "--ckpt_path")
    if not ckpt or ckpt in SPECIAL_CKPT or "://" in ckpt or ckpt.lower() in ("null", "none"):
        return
    path = Path(ckpt).expanduser()
    if path.is_dir():
        raise RunConfigError(f"--ckpt_path {ckpt} is a folder; give a checkpoint file (e.g. {path}/last.ckpt)")
    if path.is_file():  # a missing file is reported by StoriCLI (after --print_config / --help had their say)
        check_checkpoint(path)


# ------------------------------------------------------------------------------------------ epochs
def check_epochs(trainer: Any, ckpt_path: str | None, subcommand: str) -> None:
    """Refuse ``max_epochs`` < 0 and, for ``fit`` resuming ``ckpt_path``, a ``max_epochs`` the run is past.

    Args:
        trainer: The parsed ``trainer`` section (dict-like).
        ckpt_path: The resolved ``--ckpt_path`` (a file) or None.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.

    Raises:
        RunConfigError: One line with the value and what to give instead.
    """
    max_epochs = trainer.get("max_epochs") if hasattr(trainer, "get") else None
    if max_epochs is None or subcommand != "fit":
        return
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0:
        forever = " (Lightning's -1 means no limit: it would train forever)" if max_epochs == -1 else ""
        raise RunConfigError(f"--trainer.max_epochs {max_epochs}: give a number of epochs >= 1{forever}; "
                             "to stop on time instead use --trainer.max_time 00:02:00:00")
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    done = int(read_checkpoint(ckpt_path).get("epoch", -1)) + 1  # epochs the checkpoint has finished
    if done > max_epochs:
        raise RunConfigError(
            f"--trainer.max_epochs {max_epochs}: the checkpoint {ckpt_path} has already trained {done} epochs; "
            f"give --trainer.max_epochs {done} or more to continue it (or test it: stori test --ckpt_path "
            f"{ckpt_path})")


# ------------------------------------------------------------------------------------------ run folder lock
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


HELD: list[RunLock] = []  # the locks this process holds (released by release_all at the end of a command)


def release_all() -> None:
    """Release every lock this process took (:class:`RunLock`)."""
    while HELD:
        HELD.pop().release()


class RunLock:
    """``<folder>/.stori-fit.lock``, created exclusively (``O_EXCL``) and holding ``{"pid", "host", "started"}``.

    Args:
        folder: The run folder (``runs/<name>/version_N``).
        stale_after_s: An unreadable lock file (a process killed while writing it) older than this is stale.
    """

    def __init__(self, folder: str | os.PathLike, stale_after_s: float = 60.0):
        self.path = Path(folder) / LOCK_NAME
        self.stale_after_s = stale_after_s
        self.held = False

    def holder(self) -> dict | None:
        """The lock file's content, or None when it is absent or unreadable."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _stale(self) -> bool:
        info = self.holder()
        if info is None:
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_after_s
            except FileNotFoundError:
                return True
        pid = info.get("pid")
        return info.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def acquire(self) -> None:
        """Take the lock (taking over a stale one).

        Raises:
            RunLockedError: Another live process holds it (one line naming its pid, host and start time).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                info = self.holder() or {}
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started") or 0))
                raise RunLockedError(
                    f"run folder {self.path.parent} is in use by process {info.get('pid', '?')} on "
                    f"{info.get('host', '?')} (since {since}); wait for it to finish, or delete {self.path} "
                    "if that process is gone") from None
            except OSError as err:  # a read-only or full run folder
                raise RunConfigError(f"cannot write in the run folder {self.path.parent}: "
                                     f"{err.strerror or err}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "argv": sys.argv[1:][:20]}, f)
            self.held = True
            HELD.append(self)
            return
        raise RunLockedError(f"could not take the lock {self.path} (it keeps reappearing)")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held and (self.holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


# ------------------------------------------------------------------------------------------ empty run folders
def event_file_has_scalars(path: Path) -> bool:
    """Whether a TensorBoard event file holds a logged value (True if it cannot be read). The placeholders the
    logger writes when it starts (``hp_metric`` = -1 and the ``_hparams_/*`` summaries) do not count."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:  # pragma: no cover - keep the folder when we cannot tell
        return True
    try:
        return any(v.tag != "hp_metric" and not v.tag.startswith("_hparams_/")
                   for event in EventFileLoader(str(path)).Load() for v in event.summary.value)
    except Exception:  # noqa: BLE001 - a corrupt file: keep it
        return True


def remove_if_empty_run(folder: str | os.PathLike) -> bool:
    """Delete ``folder`` when it holds only ``config.yaml`` / ``hparams.yaml`` / a lock and event files without
    scalars (what a run that failed right after its logger started leaves). Returns whether it was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*")]
    if any(p.is_dir() for p in files):
        return False
    for p in files:
        if p.name in ("config.yaml", "hparams.yaml", LOCK_NAME):
            continue
        if not p.name.startswith("events.out.tfevents.") or event_file_has_scalars(p):
            return False
    for p in files:
        p.unlink(missing_ok=True)
    folder.rmdir()
    return True


__all__ = ["RunConfigError", "RunLockedError", "RunLock", "parse_error_line", "check_ckpt_option", "check_epochs",
           "remove_if_empty_run", "event_file_has_scalars", "release_all", "SIGTERM_STATUS", "LOCK_NAME"]
