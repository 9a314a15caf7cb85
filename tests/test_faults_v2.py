"""Fault injection, second round (issue 20): configs that would run code, images misread, runaway input, wrong
outcomes and tracebacks where one line is promised. Each test fails on the main of issue 20 and asserts the
fixed behaviour; docs/reliability.md lists them. Seconds each (tiny random CLIP, fake data, no toy training).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import make_fake
from faulthelpers import REPO, one_line_error, run_cli
from PIL import Image


# ------------------------------------------------------------------------------------------- images
def grey_images(tmp_path: Path) -> dict[str, Path]:
    """The same mid-grey (128/255 ≈ 0.502) picture in many PIL modes."""
    out = {}
    g16 = np.full((6, 6), 128 * 257, dtype=np.uint16)  # 32896 / 65535 = 128 / 255
    out["I;16"] = tmp_path / "grey16.png"
    Image.fromarray(g16).save(out["I;16"])
    out["I;16B"] = tmp_path / "grey16b.tif"
    Image.fromarray(g16.astype(">u2")).save(out["I;16B"])
    out["I"] = tmp_path / "grey32.tif"
    Image.fromarray(g16.astype(np.int32)).save(out["I"])
    out["F"] = tmp_path / "greyf.tif"
    Image.fromarray(np.full((6, 6), 128 / 255, dtype=np.float32)).save(out["F"])
    out["L"] = tmp_path / "grey8.png"
    Image.new("L", (6, 6), 128).save(out["L"])
    out["CMYK"] = tmp_path / "greycmyk.jpg"  # K = 127 of a white page: 255 - 127 = 128
    Image.new("CMYK", (6, 6), (0, 0, 0, 127)).save(out["CMYK"], quality=100)
    return out


def test_every_pil_mode_reads_as_the_same_rgb(tmp_path):
    """16-bit PNG/TIFF (I;16, I;16B), 32-bit I, float F and CMYK read as the grey they show, not white."""
    from stori_pl.data.image_io import BadImageError, ImageTooLargeError, open_rgb, to_rgb  # noqa: F401

    for mode, path in grey_images(tmp_path).items():
        with Image.open(path) as im:
            assert im.mode == mode, (mode, im.mode)
        rgb = np.asarray(open_rgb(path)).astype(int)
        assert rgb.shape == (6, 6, 3), mode
        assert np.abs(rgb - 128).max() <= 2, (mode, rgb[0, 0])  # convert("RGB") gives 255 for the 16-bit ones


def test_transparent_pixels_are_shown_over_white(tmp_path):
    """RGBA / LA / P-with-transparency: a fully transparent pixel is white, an opaque one keeps its colour."""
    from stori_pl.data.image_io import BadImageError, ImageTooLargeError, open_rgb, to_rgb  # noqa: F401

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black (what convert("RGB") shows)
    rgba.putpixel((0, 0), (200, 10, 10, 255))
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((0, 0), (60, 255))
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    paths = {}
    for name, im in {"rgba": rgba, "la": la, "pal": pal}.items():
        paths[name] = tmp_path / f"{name}.png"
        im.save(paths[name], transparency=0) if name == "pal" else im.save(paths[name])
    expected = {"rgba": (200, 10, 10), "la": (60, 60, 60), "pal": (10, 200, 10)}
    for name, path in paths.items():
        rgb = open_rgb(path)
        assert rgb.mode == "RGB"
        assert rgb.getpixel((0, 0)) == expected[name], name
        assert rgb.getpixel((3, 3)) == (255, 255, 255), name  # transparent: over white, not black
    assert to_rgb(rgba).getpixel((3, 3)) == (255, 255, 255)  # PIL images given to classify()


def test_plain_rgb_and_l_are_unchanged(tmp_path):
    """8-bit RGB / L / P read exactly as convert("RGB") read them (existing feature caches stay valid)."""
    from stori_pl.data.image_io import BadImageError, ImageTooLargeError, open_rgb, to_rgb  # noqa: F401

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    for mode in ("RGB", "L", "P"):
        path = tmp_path / f"x_{mode}.png"
        im.convert(mode).save(path)
        with Image.open(path) as ref:
            assert np.array_equal(np.asarray(open_rgb(path)), np.asarray(ref.convert("RGB"))), mode


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A tiny PNG whose header claims ``width``×``height`` pixels (valid CRCs, no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch):
    """A header claiming 20000×20000 pixels: ImageTooLargeError naming the file and the size, nothing decoded;
    through the datasets' loader (a bad image named) and the loaders of explain --image and components."""
    from stori_pl.data.image_io import BadImageError, ImageTooLargeError, open_rgb, to_rgb  # noqa: F401

    from stori_pl.cli.component_inputs import load_images
    from stori_pl.data.features import ImagePathDataset

    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png claims (20000x20000 = )?400,000,000 pixels"):
        open_rgb(bomb)
    _, _, ok = ImagePathDataset([bomb], lambda im: torch.zeros(3, 2, 2))[0]
    assert ok is False  # named by BadImageError / skipped by skip_bad_images like any unreadable image

    class Classifier:
        preprocess = staticmethod(lambda im: torch.zeros(3, 2, 2))

    with pytest.raises(ImageTooLargeError):
        load_images(Classifier(), [bomb])  # stori components --image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("STORI_MAX_IMAGE_PIXELS", "10")  # the limit is configurable; a 6x6 image is then too large
    Image.new("RGB", (6, 6)).save(tmp_path / "six.png")
    with pytest.raises(ImageTooLargeError, match="36 pixels"):
        open_rgb(tmp_path / "six.png")
    assert issubclass(ImageTooLargeError, BadImageError) and issubclass(BadImageError, ValueError)


def test_explain_image_reads_16_bit_like_8_bit(tmp_path, tiny_clip):
    """``stori explain --image``'s CLIP feature (as_image_feature -> ClipClassifier.encode_images) of a 16-bit
    grey PNG equals the 8-bit one's (on main the 16-bit one was encoded as a white picture)."""
    from stori_pl.interpret.attribution import as_image_feature
    from stori_pl.models.base import ClipClassifier

    clip, preprocess, _ = tiny_clip

    class Model:  # the parts of a classifier that encode_images uses
        device = torch.device("cpu")

        def __init__(self):
            self.clip, self.preprocess = clip, preprocess

        def encode_images(self, images):
            return ClipClassifier.encode_images(self, images)

    paths = grey_images(tmp_path)
    eight = as_image_feature(Model(), paths["L"])
    for mode in ("I;16", "I;16B", "I", "F", "CMYK"):
        assert torch.allclose(as_image_feature(Model(), paths[mode]), eight, atol=2e-2), mode
    white = tmp_path / "white.png"
    Image.new("L", (6, 6), 255).save(white)
    assert not torch.allclose(as_image_feature(Model(), white), eight, atol=2e-2)  # the test can tell


def test_no_module_opens_images_itself():
    """Every image of the library and the commands is read by data/image_io.py (the toy world draws its own)."""
    offenders = []
    for path in (REPO / "stori_pl").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("stori_pl/toy/") or rel == "stori_pl/data/image_io.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ("Image.open(" in line or '.convert("RGB")' in line) and ">>>" not in line:
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("command", [["cache"], ["attributes", "--labeller", "toy"]])
@pytest.mark.parametrize("class_path", ["subprocess.Popen", "os.system", "stori_pl.utils.write_json", "Popen"])
def test_config_class_path_cannot_run_code(tmp_path, monkeypatch, capsys, command, class_path):
    """``data.class_path: subprocess.Popen`` in a shared config: refused in one line, the command never runs."""
    import yaml

    monkeypatch.chdir(tmp_path)
    pwned = tmp_path / "pwned"
    args = {"args": ["touch", str(pwned)]} if "Popen" in class_path else {"command": f"touch {pwned}"}
    if "write_json" in class_path:
        args = {"path": str(pwned), "data": {}}
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"class_path": class_path, "init_args": args},
                                   "model": {"class_path": "stori_pl.models.StoriClassifier",
                                             "init_args": {"clip_model": "stori-tiny", "pretrained": None}}}))
    status, _, err = run_cli([command[0], "--config", str(cfg), *command[1:]], capsys)
    one_line_error(status, err, "is not a few-shot datamodule", "nothing was called")
    assert not pwned.exists()


def test_config_class_path_of_a_datamodule_still_works(tmp_path):
    from stori_pl.cli.cache import load_config
    from stori_pl.data import DTD

    cfg = tmp_path / "ok.yaml"
    cfg.write_text("data: {class_path: stori_pl.data.DTD, init_args: {root: /x}}\n")
    assert load_config([str(cfg)])[0] is DTD
    assert load_config([str(cfg)], {"data.class_path": "DTD"})[0] is DTD


# ---------------------------------------------------------------------------------------- CuPL
def test_cupl_file_repeating_a_key_is_refused(tmp_path):
    from stori_pl.data.cupl import load_cupl

    path = tmp_path / "dup.json"
    path.write_text('{"banded": ["a banded texture."], "dotted": ["dots."], "banded": ["stripes."]}')
    with pytest.raises(ValueError, match=r"dup\.json: key 'banded' appears twice"):
        load_cupl(path)
    path.write_text('{"banded": ["a banded texture."], "dotted": ["dots."]}')
    assert load_cupl(path) == {"banded": ["a banded texture."], "dotted": ["dots."]}


# --------------------------------------------------------------------------------------- shots
def test_shots_larger_than_a_class_take_every_image_once(recwarn):
    """``--data.shots 100000``: every training image once (CoOp calls Dassl's generate_fewshot_dataset with
    repeat=False, Dassl.pytorch dassl/data/datasets/base_dataset.py:167, CoOp datasets/dtd.py:41), one warning."""
    import random
    import warnings

    from stori_pl.data import coop

    entries = [[f"a{i}.jpg", 0, "a"] for i in range(20)] + [[f"b{i}.jpg", 1, "b"] for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = coop.few_shot_split({"train": entries, "val": entries}, shots=100000, seed=1)
    assert sorted(map(tuple, out["train"])) == sorted(map(tuple, entries))  # 23 entries, not 200000
    short = [w for w in caught if issubclass(w.category, coop.FewerImagesWarning)]
    assert len(short) == 1 and "2 of 2 classes have fewer training images" in str(short[0].message)
    out = coop.few_shot_split({"train": entries, "val": entries}, shots=8, seed=1)
    rng = random.Random(1)  # Dassl's loop: sample for the big class, the whole short class (no rng draw)
    assert out["train"] == rng.sample(entries[:20], 8) + entries[20:]


# -------------------------------------------------------------------------------------- report
def test_report_skips_bad_results_files_and_names_them(tmp_path, capsys):
    good = {"method": "StoriClassifier", "method_name": "SToRI", "dataset": "DTD", "shots": 2, "seed": 1,
            "metrics": {"test/acc": 0.5}, "test_ckpt": "last"}
    bad = {"list.json": b"[1, 2]", "null.json": json.dumps({**good, "metrics": {"test/acc": None}}).encode(),
           "text.json": json.dumps({**good, "metrics": {"test/acc": "high"}}).encode(),
           "shots.json": json.dumps({**good, "shots": "many"}).encode(),
           "latin1.json": json.dumps({**good, "dataset": "Caf\u00e9"}, ensure_ascii=False).encode("latin-1"),
           "nested.json": b"[" * 100000}
    b2n = {**good, "subsample_classes": "base", "base_acc": 0.5, "new_acc": 0.25, "seed": 2}
    for name, data in {"good.json": json.dumps(good).encode(), "b2n.json": json.dumps(b2n).encode(), **bad}.items():
        folder = tmp_path / name.removesuffix(".json")
        folder.mkdir()
        (folder / "test_results.json").write_bytes(data)
    for extra in ([], ["--base_to_novel", "true"]):
        status, out, err = run_cli(["report", str(tmp_path), *extra], capsys)
        assert status == 0 and "Traceback" not in err, err
        for name in bad:
            assert f"skipping {tmp_path / name.removesuffix('.json') / 'test_results.json'}" in err, (name, err)
    status, out, err = run_cli(["report", str(tmp_path)], capsys)
    assert "50.0" in out  # the good run is reported


# ------------------------------------------------------------------------------------- retrieve
def test_retrieve_with_an_unwritable_cache_warns_once_and_ranks(tmp_path, monkeypatch, capsys):
    """The cache folder cannot be made (a file is in the way; as root a chmod would not stop the write):
    one CacheWriteWarning, the ranking is printed, exit 0."""
    import warnings

    fake = make_fake("dtd", tmp_path / "data")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = run_cli(["retrieve", "--images", str(fake.dataset_dir), "--prompts+", "a photo", "--model",
                                    "stori-tiny", "--pretrained", "null", "--start_block", "2", "--top_k", "3", "--cache_dir",
                                    str(blocker / "cache")], capsys)
    assert status == 0, err
    cache_warnings = [w for w in caught if "could not write the feature cache" in str(w.message)]
    assert len(cache_warnings) == 1, [str(w.message) for w in caught]
    assert "#1" in out or "1." in out or "a photo" in out, out
    assert not (blocker / "cache").exists()


# ------------------------------------------------------------------------------------ output paths
@pytest.fixture(scope="module")
def stori_ckpt(tmp_path_factory, tiny_clip):
    """A two-epoch StoriClassifier checkpoint on random features (as tests/test_explain.py)."""
    import lightning as L
    from test_explain import PROMPTS, _Data

    from stori_pl.models import StoriClassifier

    root = tmp_path_factory.mktemp("explain_v2")
    model = StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, lr=0.5, prompts=PROMPTS)
    trainer = L.Trainer(max_epochs=2, default_root_dir=root, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=_Data(model.clip.visual.output_dim))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_explain_image_html_without_sae_writes_the_page(stori_ckpt, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(photo)
    html = tmp_path / "why.html"
    status, out, err = run_cli(["explain", str(stori_ckpt), "--image", str(photo), "--html", str(html)], capsys)
    assert status == 0, err
    assert html.is_file() and "<html" in html.read_text(encoding="utf-8").lower() and f"wrote {html}" in out


def test_output_path_that_is_a_folder_or_a_full_disk_is_one_line(stori_ckpt, tmp_path, monkeypatch, capsys):
    """embed --out, explain --html, report --csv naming a folder; report --csv on a full disk (ENOSPC)."""
    import contextlib
    import errno

    import stori_pl.cli.report as report_cmd

    monkeypatch.chdir(tmp_path)
    for name in ("emb.npy", "page.html", "table.csv"):
        (tmp_path / name).mkdir()
    run = tmp_path / "runs" / "r" / "version_0"
    run.mkdir(parents=True)
    (run / "test_results.json").write_text(json.dumps(
        {"method": "StoriClassifier", "method_name": "SToRI", "dataset": "DTD", "shots": 2, "seed": 1,
         "metrics": {"test/acc": 0.5}}))
    cases = [["embed", "a photo", "--model", "stori-tiny", "--pretrained", "null", "--start_block", "2",
              "--out", "emb.npy"],
             ["explain", str(stori_ckpt), "--html", "page.html"],
             ["report", "runs", "--csv", "table.csv"]]
    for argv in cases:
        status, _, err = run_cli(argv, capsys)
        one_line_error(status, err, argv[-1], "folder")

    @contextlib.contextmanager
    def full_disk(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(report_cmd, "atomic_write", full_disk)
    status, _, err = run_cli(["report", "runs", "--csv", "new.csv"], capsys)
    one_line_error(status, err, "cannot write new.csv: No space left on device")


# ---------------------------------------------------------------------------------------- threads
def test_thread_choice_degrades_gracefully_on_a_busy_machine(monkeypatch):
    from stori_pl.cli import threads

    for var in ("STORI_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_cores", lambda: 8)
    monkeypatch.setattr(threads, "_load", lambda: 0.2)
    big = ["fit", "--config", "coop/imagenet_16shot.yaml"]
    assert threads.choose_threads(big) == 8  # an idle machine: every core
    assert threads.choose_threads(["fit", "--config", "demo"]) == 1  # toy-size: one thread
    assert threads.choose_threads(["embed", "a photo", "--model", "stori-tiny"]) == 1
    assert threads.choose_threads(["toy-pretrain"]) == 1
    monkeypatch.setattr(threads, "_load", lambda: 7.6)
    assert threads.choose_threads(big) == 1  # busy: the idle cores only, never oversubscribed
    monkeypatch.setattr(threads, "_load", lambda: 5.0)
    assert threads.choose_threads(big) == 3
    monkeypatch.setattr(threads, "_load", lambda: 30.0)
    assert threads.choose_threads(big) == 1
    monkeypatch.setenv("STORI_THREADS", "4")
    assert threads.choose_threads(["fit", "--config", "demo"]) == 4  # forced
    monkeypatch.setenv("STORI_THREADS", "torch")
    assert threads.choose_threads(big) is None
    monkeypatch.setenv("STORI_THREADS", "many")
    with pytest.raises(ValueError, match="STORI_THREADS='many'"):
        threads.choose_threads(big)
    monkeypatch.delenv("STORI_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(["fit", "--config", "demo"]) is None  # the user's setting wins
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.configure_threads(["fit", "--config", "demo"]) == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
