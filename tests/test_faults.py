"""Fault injection (issue 15): concurrent runs, failed and killed checkpoint writes, unreadable checkpoints,
blank prompts, bad images, failed downloads, prompt warnings. Each test asserts the outcome (a clear error
or a recovered run) and that no earlier result is lost. The table in docs/reliability.md lists them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from fakedata import make_fake
from faulthelpers import fit_args

from stori_pl.cli import main
from stori_pl.models.checkpoint import UnreadableCheckpointError, read_checkpoint
from stori_pl.cli.lightning_cli import (
    run_lightning_cli,  # raises user errors (`stori` prints them as one line)
)

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
UNREADABLE = "not a readable stori-pl checkpoint (truncated or corrupt)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Fake DTD, a private feature cache, a working folder; one finished run ``base`` (fit + test)."""
    root = tmp_path_factory.mktemp("faults")
    fake = make_fake("dtd", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(root / "cache"))
        mp.chdir(root)
        printer = json.dumps({"class_path": "stori_pl.lightning.callbacks.ProgressPrinter",
                              "init_args": {"every_n_epochs": 1}})
        out = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            assert main(fit_args(fake, "base", f"--trainer.callbacks+={printer}")) == 0
        yield fake, root, (caught, out.getvalue())


def run_dir(root: Path, name: str, version: int = 0) -> Path:
    return root / "runs" / name / f"version_{version}"


# ----------------------------------------------------------------------------------- run folders
def test_fault_claim_run_version_is_exclusive_under_threads(tmp_path):
    from stori_pl.cli.lightning_cli import claim_run_version

    (tmp_path / "version_0").mkdir()  # an earlier run is kept
    got, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        got.append(claim_run_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))


def test_fault_two_concurrent_fits_get_separate_folders(env):
    fake, root, _ = env
    cmd = [sys.executable, "-c", "import sys; from stori_pl.cli import main; sys.exit(main(sys.argv[1:]))"]
    envvars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PYTHONWARNINGS": "ignore",
               "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd + fit_args(fake, "twin", "--model.lr", lr), cwd=root, env=envvars,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for lr in ("0.003", "0.1")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lrs = set()
    for version in (0, 1):
        run = run_dir(root, "twin", version)
        config_lr = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"]
        hparams_lr = yaml.safe_load((run / "hparams.yaml").read_text())["lr"]
        result = json.loads((run / "test_results.json").read_text())
        ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
        assert config_lr == hparams_lr and len(ckpts) == 2  # best-*.ckpt and last.ckpt of this run only
        assert {read_checkpoint(c)["hyper_parameters"]["lr"] for c in ckpts} == {config_lr}
        assert (root / result["ckpt_path"]).parent == run / "checkpoints"  # tested its own checkpoint
        lrs.add(config_lr)
    assert lrs == {0.003, 0.1}
    assert not run_dir(root, "twin", 2).exists()


def test_fault_failed_run_gives_its_empty_folder_back(env):
    fake, root, _ = env
    argv = fit_args(fake, "failing")
    argv[argv.index("--data.root") + 1] = str(root / "no_such_data")
    with pytest.raises(FileNotFoundError, match="data root not found"):
        run_lightning_cli(argv)
    assert list((root / "runs" / "failing").iterdir()) == []  # claimed, nothing written, given back


# --------------------------------------------------------------------------------- checkpoint writes
def copy_run(root: Path, name: str) -> Path:
    dest = run_dir(root, name)
    shutil.copytree(run_dir(root, "base"), dest)
    return dest


def test_fault_disk_full_during_checkpoint_write_keeps_previous(env, monkeypatch):
    fake, root, _ = env
    ckpts = copy_run(root, "diskfull") / "checkpoints"
    before = (ckpts / "last.ckpt").read_bytes()
    real_save = torch.save

    def half_then_enospc(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError, match=r"could not write checkpoint .*No space left.*previous file .* unchanged") as err:
        run_lightning_cli(fit_args(fake, "diskfull", "--ckpt_path", "last", epochs=3))
    assert isinstance(err.value, ValueError)  # the `stori` dispatcher prints it as one line, exit 2
    monkeypatch.setattr(torch, "save", real_save)
    assert (ckpts / "last.ckpt").read_bytes() == before and read_checkpoint(ckpts / "last.ckpt")["epoch"] == 1
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_fault_kill_during_checkpoint_write_then_resume(env):
    fake, root, _ = env
    ckpts = copy_run(root, "killed") / "checkpoints"
    before = (ckpts / "last.ckpt").read_bytes()
    flag = root / "writing.flag"
    driver = root / "blocking_fit.py"
    driver.write_text(
        "import io, sys, time, torch\n"
        "real = torch.save\n"
        "def blocking(obj, f, *a, **k):\n"
        "    buf = io.BytesIO(); real(obj, buf, *a, **k)\n"
        "    f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()\n"
        f"    open({str(flag)!r}, 'w').close(); time.sleep(600)\n"
        "torch.save = blocking\n"
        "from stori_pl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    envvars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PYTHONWARNINGS": "ignore",
               "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), *fit_args(fake, "killed", "--ckpt_path", "last", epochs=3)],
                            cwd=root, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flag.exists(), "the fit never reached its checkpoint write"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (ckpts / "last.ckpt").read_bytes() == before  # the half-written file is a separate temp file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(fit_args(fake, "killed", "--ckpt_path", "last", "--test_after_fit", "false", epochs=3)) == 0
    resumed = read_checkpoint(ckpts / "last.ckpt")
    assert resumed["epoch"] == 2 and resumed["global_step"] == 9  # 3 epochs x 3 batches, none repeated


# ----------------------------------------------------------------------------- unreadable checkpoints
def _pickle_payload(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "stori": Payload()}, path)


CORRUPTIONS = {
    "truncated": lambda p, m: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p, m: p.write_bytes(b""),
    "random": lambda p, m: p.write_bytes(os.urandom(4096)),
    "pickle": _pickle_payload,
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_fault_unreadable_checkpoint_clear_error(env, kind):
    from stori_pl.models import StoriClassifier

    fake, root, _ = env
    ckpts = copy_run(root, f"bad_{kind}") / "checkpoints"
    best = next(ckpts.glob("best-*.ckpt"))
    best_bytes, marker = best.read_bytes(), root / f"pwned_{kind}"
    CORRUPTIONS[kind](ckpts / "last.ckpt", marker)
    rel = rf"(\S*/)?runs/bad_{kind}/version_0/checkpoints/"  # absolute, or relative to the working folder
    expected = rf"{re.escape(UNREADABLE)}: {rel}last\.ckpt.*readable checkpoints of this run: {rel}{re.escape(best.name)}"
    with pytest.raises(UnreadableCheckpointError, match=expected):
        read_checkpoint(ckpts / "last.ckpt")
    with pytest.raises(ValueError, match=expected):
        StoriClassifier.load_from_checkpoint(ckpts / "last.ckpt")
    with pytest.raises(ValueError, match=expected):  # before any model or data is loaded
        run_lightning_cli(fit_args(fake, f"bad_{kind}", "--ckpt_path", "last"))
    assert not marker.exists()  # the pickle payload never ran
    assert best.read_bytes() == best_bytes and not run_dir(root, f"bad_{kind}", 1).exists()
    assert StoriClassifier.load_from_checkpoint(best).classnames == fake.classnames  # the way out works


def test_fault_pickle_payload_refused_by_lightning_loads_too(tmp_path):
    from stori_pl.models.checkpoint import AtomicCheckpointIO

    marker = tmp_path / "pwned"
    _pickle_payload(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ValueError, match=re.escape(UNREADABLE)):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt", weights_only=False)
    assert not marker.exists()


def test_fault_torch_pinned_to_safe_load_and_download_extra():
    text = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text and 'download = ["gdown' in text


# ------------------------------------------------------------------------------------------- prompts
def write_cupl(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_fault_blank_and_empty_cupl_sentences(env, tmp_path):
    from stori_pl.data import DTD

    fake, _, _ = env
    good = json.loads(fake.cupl.read_text())
    blank = write_cupl(tmp_path / "blank.json", {**good, "blotchy": ["", "  ", "a blotchy photo."]})
    dm = DTD(str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(blank))
    with pytest.raises(ValueError, match=rf"{re.escape(str(blank))}.*1:'blotchy'.*2 blank.*position\(s\) \[0, 1\].*drop_blank_prompts"):
        dm.prompt_set()
    dm = DTD(str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(blank),
             drop_blank_prompts=True)
    with pytest.warns(UserWarning, match="dropped 2 blank sentence"):
        assert dm.prompt_set().cupl[1] == ["a blotchy photo."]

    empty = write_cupl(tmp_path / "empty.json", {**good, "braided": []})
    dm = DTD(str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(empty))
    with pytest.raises(ValueError, match=rf"{re.escape(str(empty))}.*2:'braided': key 'braided' holds an empty list") as err:
        dm.prompt_set()
    assert "close keys" not in str(err.value)


def test_fault_close_keys_never_suggest_the_key_itself():
    from stori_pl.data.cupl import match_cupl

    with pytest.raises(ValueError) as err:
        match_cupl({"dogs": ["a dog."], "dog": []}, ["dog", "cat"], source="x.json")
    msg = str(err.value)
    assert "0:'dog': key 'dog' holds an empty list" in msg and "1:'cat' has no key" in msg
    assert "'dog'" not in msg.split("1:'cat' has no key")[1]


def test_fault_prompt_warnings_once_shortened_and_empty(tiny_clip):
    from stori_pl.text.prompt_weighting import encode_weighted  # noqa: F401  (a second tokenization path)
    from stori_pl.text.syntax import tokenize_weighted

    _, _, tokenizer = tiny_clip
    long = " ".join(["word"] * 200) + " unique-end-marker"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("once")
        for _ in range(3):
            tokenize_weighted([long], tokenizer)
        tokenize_weighted([""], tokenizer)
    texts = [str(w.message) for w in caught]
    truncated = [t for t in texts if "truncated" in t]
    assert len(truncated) == 1 and "(1017 characters)" in truncated[0] and "unique-end-marker" not in truncated[0]
    assert len(truncated[0]) < 250
    assert any(t.startswith("empty prompt ''") for t in texts)


# -------------------------------------------------------------------------------------------- images
def test_fault_missing_and_unreadable_images(env, tmp_path):
    from stori_pl.data import DTD
    from stori_pl.data.features import BadImageError

    fake, _, _ = env
    data = tmp_path / "data"
    shutil.copytree(fake.root, data)
    split = json.loads((data / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    images = [data / "dtd" / "images" / e[0] for e in split["test"]]  # always encoded, whatever the shots
    images[0].unlink()
    dm = DTD(str(data), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(fake.cupl),
             cache_dir=str(tmp_path / "cache"), num_workers=0)
    with pytest.raises(FileNotFoundError, match=rf"(?s)missing.*{re.escape(str(images[0]))}"):
        dm.prepare_data()
    shutil.copy(images[1], images[0])
    images[2].write_bytes(b"not an image")
    dm = DTD(str(data), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(fake.cupl),
             cache_dir=str(tmp_path / "cache"), num_workers=0)
    with pytest.raises(BadImageError, match=rf"cannot read 1 image\(s\).*{re.escape(str(images[2]))}"):
        dm.prepare_data()


# ----------------------------------------------------------------------------------------- downloads
def test_fault_download_needs_gdown_and_cleans_up(env, tmp_path, monkeypatch):
    from stori_pl.data import DTD, coop

    fake, _, _ = env
    missing_root = tmp_path / "new" / "data"
    monkeypatch.setitem(sys.modules, "gdown", None)  # not installed (whether or not it is here)
    dm = DTD(str(missing_root), clip_model="stori-tiny", pretrained=None, download=True)
    with pytest.raises(ValueError, match=r'gdown.*pip install "stori-pl\[download\]"'):
        dm.prepare_data()
    assert not (tmp_path / "new").exists()  # the folders it created are gone
    monkeypatch.undo()

    root = tmp_path / "kept"
    (root / "dtd").mkdir(parents=True)
    (root / "dtd" / "notes.txt").write_text("mine")

    def partial_download(file_id, dest):
        dest.write_text("{half")
        raise coop.DownloadError("could not download (network down)")

    monkeypatch.setattr(coop, "require_gdown", lambda: None)
    monkeypatch.setattr(coop, "download_split", partial_download)
    dm = DTD(str(root), clip_model="stori-tiny", pretrained=None, download=True)
    with pytest.raises(ValueError, match="network down"):
        dm.prepare_data()
    assert sorted(p.name for p in (root / "dtd").iterdir()) == ["notes.txt"]  # kept what was there


# ------------------------------------------------------------------------------------ demo feedback
def test_fault_fit_and_test_without_best_warning_and_with_progress_lines(env):
    _, root, (caught, stdout) = env
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "val acc" in lines[-1]
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "ModelCheckpoint" in m and "best" in m], messages
    assert not [m for m in messages if "weights_only" in m], messages
    result = json.loads((run_dir(root, "base") / "test_results.json").read_text())
    assert Path(result["ckpt_path"]).name.startswith("best-")
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert demo["trainer"]["enable_progress_bar"] is False
    assert any(c["class_path"].endswith("ProgressPrinter") for c in demo["trainer"]["callbacks"])


def test_fault_progress_printer_line():
    from types import SimpleNamespace

    from stori_pl.lightning.callbacks import ProgressPrinter

    trainer = SimpleNamespace(current_epoch=9, max_epochs=60,
                              callback_metrics={"train/loss": torch.tensor(0.4213), "val/acc": torch.tensor(0.85)})
    assert ProgressPrinter.line(trainer, 72.4) == "epoch 10/60  train loss 0.4213  val acc 85.0%  elapsed 1:12"
