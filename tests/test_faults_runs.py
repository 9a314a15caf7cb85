"""Fault injection of issue 20 around training runs: SIGTERM (exit 143), two resumes of one run (the lock), resumes
past max_epochs and negative max_epochs, --ckpt_path files, bad option values and Python YAML tags, a run failing
after its logger started, a read-only run folder; CLIP weights that are not a checkpoint or cannot be downloaded.
docs/reliability.md lists them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import make_fake
from faulthelpers import REPO, TESTS, fit_args, one_line_error, run_cli, stori_process


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A fit of 1000 epochs stopped by SIGTERM once its first last.ckpt exists: (fake, root, status, output)."""
    import signal
    import time

    root = tmp_path_factory.mktemp("faults_v2")
    fake = make_fake("dtd", root / "data")
    env_cache = {"STORI_CACHE": str(root / "cache")}
    os.environ.update(env_cache)
    ckpt = root / "runs" / "term" / "version_0" / "checkpoints" / "last.ckpt"
    proc = stori_process(fit_args(fake, "term", epochs=1000), root)
    deadline = time.monotonic() + 280
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    yield fake, root, proc.returncode, out


@pytest.mark.slow
def test_sigterm_mid_fit_writes_a_resumable_checkpoint_and_exits_143(sigterm_run):
    from stori_pl.models.checkpoint import read_checkpoint

    fake, root, status, out = sigterm_run
    run = root / "runs" / "term" / "version_0"
    assert status == 143, out
    assert "Traceback" not in out and "resume with --ckpt_path last" in out, out
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] < 999  # stopped early, a whole epoch in the checkpoint
    assert not (run / ".stori-fit.lock").exists()  # the lock was released


def one_more_epoch(root: Path) -> int:
    """max_epochs for a resume of the SIGTERM run that trains one epoch (bounded if a refusal fails)."""
    from stori_pl.models.checkpoint import read_checkpoint

    return int(read_checkpoint(root / "runs" / "term" / "version_0" / "checkpoints" / "last.ckpt")["epoch"]) + 2


@pytest.mark.slow
def test_second_resume_of_a_run_refuses_naming_the_holder(sigterm_run, monkeypatch, capsys):
    import socket

    fake, root, _, _ = sigterm_run
    monkeypatch.chdir(root)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = root / "runs" / "term" / "version_0" / ".stori-fit.lock"
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": 0}))
        status, _, err = run_cli(fit_args(fake, "term", "--ckpt_path", "last", epochs=one_more_epoch(root)), capsys)
        one_line_error(status, err, f"is in use by process {holder.pid}", "runs/term/version_0/.stori-fit.lock")
    finally:
        holder.kill()
        holder.wait()
        lock.unlink(missing_ok=True)
    assert not (root / "runs" / "term" / "version_1").exists()


def test_run_lock_is_exclusive_and_takes_over_stale_locks(tmp_path):
    import socket

    from stori_pl.lightning.run_guard import RunLock, RunLockedError

    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()  # free again
    second.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".stori-fit.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    third = RunLock(tmp_path)
    third.acquire()  # the holder is gone: stale, taken over
    assert json.loads((tmp_path / ".stori-fit.lock").read_text())["pid"] == os.getpid()
    third.release()
    (tmp_path / ".stori-fit.lock").write_text("")  # a holder killed while writing it: stale after a while
    os.utime(tmp_path / ".stori-fit.lock", (0, 0))
    RunLock(tmp_path).acquire()


@pytest.mark.slow
def test_resume_past_max_epochs_and_negative_max_epochs_are_one_line(sigterm_run, monkeypatch, capsys):
    fake, root, _, _ = sigterm_run
    monkeypatch.chdir(root)
    status, _, err = run_cli(fit_args(fake, "term", "--ckpt_path", "last", epochs=0), capsys)
    one_line_error(status, err, "--trainer.max_epochs 0: the checkpoint", "has already trained")
    for epochs, needle in ((-1, "train forever"), (-2, "give a number of epochs")):
        status, _, err = run_cli(fit_args(fake, "neg", epochs=epochs), capsys)
        one_line_error(status, err, f"--trainer.max_epochs {epochs}", needle)
    assert not (root / "runs" / "neg").exists() or not any((root / "runs" / "neg").iterdir())


@pytest.mark.parametrize("kind", ["truncated", "empty", "pickle", "folder"])
@pytest.mark.parametrize("command", ["fit", "test", "validate"])
def test_ckpt_path_file_that_is_not_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys, kind, command):
    """Refused before LightningCLI's _parse_ckpt_path reads the file (EOFError / OSError / UnpicklingError)."""
    import pickle

    monkeypatch.chdir(tmp_path)
    fake = make_fake("dtd", tmp_path / "data")
    path = tmp_path / "bad.ckpt"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, buf)
    data = {"truncated": buf.getvalue()[:50], "empty": b"", "pickle": pickle.dumps(Path("x"))}
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(data[kind])
    argv = fit_args(fake, "bad")
    argv[0] = command
    status, _, err = run_cli([*argv, "--ckpt_path", str(path)], capsys)
    one_line_error(status, err, "bad.ckpt")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("version_*"))


def test_bad_option_values_and_python_yaml_tags_are_one_line(tmp_path, monkeypatch, capsys):
    """``--model.lr nan`` (was a 78-line usage dump) and ``!!python/object/apply`` configs (a traceback)."""
    monkeypatch.chdir(tmp_path)
    fake = make_fake("dtd", tmp_path / "data")
    status, out, err = run_cli([*fit_args(fake, "nan"), "--model.lr", "nan"], capsys)
    one_line_error(status, err, "--model.lr", "nan")
    assert len(err.strip().splitlines()) <= 2 and "usage:" not in err, err
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'model: !!python/object/apply:os.system ["touch {tmp_path / "pwned"}"]\n')
    status, _, err = run_cli(["fit", "--config", str(evil)], capsys)
    one_line_error(status, err, "evil.yaml", "Python tags are refused")
    assert not (tmp_path / "pwned").exists()
    status, _, err = run_cli(["embed", "--config", str(evil), "a photo"], capsys)
    one_line_error(status, err, "python/object/apply", "Python tags are refused")
    for command in (["cache"], ["attributes", "--labeller", "toy"]):
        status, _, err = run_cli([command[0], "--config", str(evil), *command[1:]], capsys)
        one_line_error(status, err, "evil.yaml is not plain YAML", "Python tags are refused")
    assert not (tmp_path / "pwned").exists()


def test_failed_run_after_its_logger_started_leaves_no_folder(tmp_path, monkeypatch):
    """A run failing in its first training step (after config.yaml and a scalar-less event file exist) gives its
    version folder back; a folder with scalars or checkpoints is kept."""
    from torch.utils.tensorboard import SummaryWriter

    from stori_pl.cli.lightning_cli import run_lightning_cli
    from stori_pl.lightning.run_guard import remove_if_empty_run
    from stori_pl.models import StoriClassifier

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    fake = make_fake("dtd", tmp_path / "data")

    def boom(self, batch, batch_idx):
        assert (Path(self.trainer.log_dir) / "config.yaml").is_file()  # the logger has started
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(StoriClassifier, "training_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        run_lightning_cli(fit_args(fake, "late"))
    assert not (tmp_path / "runs" / "late" / "version_0").exists()
    kept = tmp_path / "kept"
    with SummaryWriter(str(kept)) as w:
        w.add_scalar("x", 1.0, 0)
    (kept / "config.yaml").write_text("a: 1\n")
    assert remove_if_empty_run(kept) is False and kept.is_dir()




@pytest.mark.slow
def test_resume_in_a_read_only_run_folder_is_one_line(sigterm_run, monkeypatch, capsys):
    """``fit --ckpt_path last`` where the run folder is read-only (EROFS; simulated, root ignores chmod):
    refused before training (it was the TensorBoard writer's Errno 30 traceback)."""
    import errno

    from stori_pl.lightning import run_guard

    fake, root, _, _ = sigterm_run
    monkeypatch.chdir(root)
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(run_guard.LOCK_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(run_guard.os, "open", read_only)
    status, _, err = run_cli(fit_args(fake, "term", "--ckpt_path", "last", epochs=one_more_epoch(root)), capsys)
    one_line_error(status, err, "cannot write in the run folder runs/term/version_0", "Read-only file system")



# TensorBoard's event writer on a full disk: every record write after the first few fails in its writer thread
ENOSPC_DRIVER = """
import errno, sys
from tensorboard.summary.writer import record_writer
real, calls = record_writer.RecordWriter.write, [0]
def write(self, data):
    calls[0] += 1
    if calls[0] > 3:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, data)
record_writer.RecordWriter.write = write
from stori_pl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_full_disk_in_the_tensorboard_writer_thread_is_one_line(sigterm_run):
    """ENOSPC inside TensorBoard's writer thread during a resumed fit: one line naming the event file, exit 2, no
    thread traceback, and the run's last.ckpt still readable (it printed the thread's and the main thread's
    tracebacks and a message naming no file)."""
    import shutil

    from stori_pl.models.checkpoint import read_checkpoint

    fake, root, _, _ = sigterm_run
    shutil.copytree(root / "runs" / "term", root / "runs" / "tbfull")
    ckpt = root / "runs" / "tbfull" / "version_0" / "checkpoints" / "last.ckpt"
    epoch = read_checkpoint(ckpt)["epoch"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    args = fit_args(fake, "tbfull", "--ckpt_path", "last", epochs=epoch + 3)
    proc = subprocess.run([sys.executable, "-c", ENOSPC_DRIVER, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=280)
    line = one_line_error(proc.returncode, proc.stderr, "No space left on device",
                          "cannot write runs/tbfull/version_0/events.out.tfevents.")
    assert "Exception in thread" not in proc.stderr, line
    assert read_checkpoint(ckpt)["epoch"] >= epoch  # nothing already saved is lost


# --------------------------------------------------------------------------------- CLIP weights
@pytest.mark.parametrize("kind", ["text", "pickle", "truncated"])
def test_pretrained_file_that_is_not_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys, kind):
    import pickle

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "weights.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    path.write_bytes({"text": b"hello, not weights\n", "pickle": pickle.dumps(Path("x")),
                      "truncated": buf.getvalue()[:40]}[kind])
    status, _, err = run_cli(["embed", "a photo", "--model", "stori-tiny", "--pretrained", str(path)], capsys)
    one_line_error(status, err, f"--pretrained {path} is not a CLIP checkpoint")
    assert len(err.strip().splitlines()) == 1, err


def test_offline_pretrained_tag_fails_fast_in_one_line(monkeypatch, capsys):
    """``stori embed "a photo" --model ViT-B-32 --pretrained openai`` offline: one line naming the tag, where
    open_clip looked and --pretrained FILE, after the ~3 s probe (simulated: no network is used)."""
    import time

    import huggingface_hub
    import open_clip

    from stori_pl.text import clip_weights

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # not cached
    for var in (*clip_weights.PROXY_VARS, "HF_HUB_OFFLINE", "STORI_NO_NETWORK_PROBE"):
        monkeypatch.delenv(var, raising=False)
    probed = []
    monkeypatch.setattr(clip_weights, "reachable", lambda host, **k: probed.append(host) or False)

    def no_download(*a, **k):
        raise AssertionError("open_clip must not be asked to download")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_download)
    start = time.monotonic()
    status, _, err = run_cli(["embed", "a photo", "--model", "ViT-B-32", "--pretrained", "openai"], capsys)
    line = one_line_error(status, err, "'openai'", "huggingface", "--pretrained /path/to/checkpoint")
    assert "timm/vit_base_patch32_clip_224.openai" in line and probed == ["huggingface.co"]
    assert time.monotonic() - start < 20 and len(err.strip().splitlines()) == 1, err

    # reachable, but the download itself fails (a firewall, a 5xx): the same one line with the reason
    monkeypatch.setattr(clip_weights, "reachable", lambda host, **k: True)

    def refused(*a, **k):
        raise OSError("connection refused by the simulated server")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refused)
    status, _, err = run_cli(["embed", "a photo", "--model", "ViT-B-32", "--pretrained", "openai"], capsys)
    one_line_error(status, err, "'openai'", "simulated server", "--pretrained /path/to/checkpoint")
    assert len(err.strip().splitlines()) == 1, err
