"""`FewShotImageFolder`: your own images (a folder per class) trained like the benchmarks, on toy-world images."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from stori_pl.cli import main
from stori_pl.data import FewShotImageFolder
from stori_pl.data.few_shot_folder import stratified_split
from stori_pl.toy.world import ATTRIBUTES, render, sample_object

QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
TINY = ["--model.clip_model", "stori-tiny", "--model.pretrained", "null"]
CLASSES = ("red_circle", "blue_square", "green_triangle")
PROMPTS = {
    "red circle": ["a red circle is a round red shape.", "a red disc on a plain background."],
    "blue square": ["a blue square has four equal sides.", "a blue box shape."],
    "green triangle": ["a green triangle has three corners.", "a green shape with three sides."],
}


def make_folder(root: Path, per_class: int = 7, split_folders: bool = False, seed: int = 0) -> Path:
    """Toy images ``root/<class>/*.png`` (or ``root/{train,test}/<class>/*.png``) drawn by the toy world."""
    rng = random.Random(seed)
    for name in CLASSES:
        color, shape = name.split("_")
        for i in range(per_class):
            part = ("train" if i < per_class - 2 else "test") if split_folders else ""
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            obj = sample_object(rng, heldout=None, color=color, shape=shape)
            Image.fromarray(render(obj, rng)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    return tmp_path


def test_done_when_command_trains_and_tests_on_own_folder(env, encode_counter):
    """The issue's command, verbatim apart from a short run: trains, tests, writes the test results; a second run
    reads every feature from the cache."""
    make_folder(env / "mydata")
    argv = ["fit", "--data", "FewShotImageFolder", "--data.root", "mydata", "--data.prompts", "prompts.json",
            "--data.shots", "4", "--model", "StoriClassifier", "--model.clip_model", "stori-toy",
            "--model.pretrained", "builtin", "--data.num_workers", "0", *QUIET, "--trainer.max_epochs", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
        encoded = encode_counter.images
        assert encoded == 21  # 3 classes x 7 images: 12 train (4-shot), 3 val, 6 test
        assert main([*argv, "--trainer.logger.init_args.name", "again"]) == 0
    assert encode_counter.images == encoded  # the feature cache works as for the benchmarks
    (result,) = (env / "runs" / "stori").rglob("test_results.json")
    data = json.loads(result.read_text())
    assert data["dataset"] == "FewShotImageFolder" and data["shots"] == 4 and data["method"] == "StoriClassifier"
    assert 0.0 <= data["metrics"]["test/acc"] <= 1.0


def test_stratified_split_is_coop_like_and_seeded(tmp_path):
    make_folder(tmp_path / "d", per_class=10)
    dm = FewShotImageFolder(str(tmp_path / "d"), clip_model="stori-tiny", pretrained=None, shots=2, seed=1)
    split = dm.load_split(dm.dataset_dir())
    for part, n in (("train", 5), ("val", 2), ("test", 3)):  # round(10 * .5), round(10 * .2), the rest
        assert len(split[part]) == 3 * n
    assert [e[2] for e in split["train"][::5]] == ["blue_square", "green_triangle", "red_circle"]  # sorted folders
    paths = [e[0] for part in split.values() for e in part]
    assert len(set(paths)) == 30  # disjoint parts covering every image
    other = FewShotImageFolder(str(tmp_path / "d"), clip_model="stori-tiny", pretrained=None, shots=2, seed=2)
    assert other.load_split(other.dataset_dir())["test"] != split["test"]
    fixed = FewShotImageFolder(str(tmp_path / "d"), clip_model="stori-tiny", pretrained=None, shots=2, seed=2,
                               split_seed=1)
    assert fixed.load_split(fixed.dataset_dir()) == split
    # the reference: CoOp's read_and_split_data loop, written out (KaiyangZhou/CoOp datasets/dtd.py 77-93)
    rng = random.Random(1)
    for label, name in enumerate(sorted(CLASSES)):
        images = sorted(f"{name}/{p.name}" for p in (tmp_path / "d" / name).iterdir())
        rng.shuffle(images)
        assert [e[0] for e in split["train"] if e[1] == label] == images[:5]
        assert [e[0] for e in split["test"] if e[1] == label] == images[7:]


def test_class_names_few_shot_and_prompts(tmp_path):
    make_folder(tmp_path / "d", split_folders=True)
    (tmp_path / "p.json").write_text(json.dumps({"blue_square": ["s1."], "green triangle": ["t1."],
                                                 "Roundy": ["c1.", "c2."]}))
    dm = FewShotImageFolder(str(tmp_path / "d"), prompts=str(tmp_path / "p.json"), classnames={"red_circle": "Roundy"},
                            clip_model="stori-tiny", pretrained=None, shots=2, seed=1)
    subsets = dm.subsets()
    assert dm.classnames == ["blue square", "green triangle", "Roundy"]
    assert len(subsets["train"]) == 6 and len(subsets["test"]) == 6 and len(subsets["val"]) == 6
    assert not {e[0] for e in subsets["val"]} & {e[0] for e in subsets["train"]}  # val: the rest of train/
    assert all(e[0].startswith("test/") for e in subsets["test"])
    prompts = dm.prompt_set()
    assert prompts.cupl == [["s1."], ["t1."], ["c1.", "c2."]] and prompts.base[0] == ["a photo of a blue square."]
    (tmp_path / "names.json").write_text(json.dumps({"blue_square": "Boxy"}))
    from_file = FewShotImageFolder(str(tmp_path / "d"), classnames=str(tmp_path / "names.json"), shots=2,
                                   clip_model="stori-tiny", pretrained=None)
    assert from_file.folder_classnames() == ["Boxy", "green triangle", "red circle"]
    no_file = FewShotImageFolder(str(tmp_path / "d"), clip_model="stori-tiny", pretrained=None, shots=2)
    with pytest.warns(UserWarning, match="templates stand in"):
        assert no_file.prompt_set().cupl[2] == ["a photo of a red circle."]


@pytest.mark.parametrize("case, message", [
    ("empty_class", "class folder .*empty_one has no images"),
    ("no_images", "has no class folders"),
    ("missing_prompt", "prompts file .*no prompts for 1 of 3 classes.*red circle"),
    ("too_few", "'red_circle' has 2 image"),
])
def test_bad_folders_are_one_line_errors(env, case, message, capsys, encode_counter):
    root = make_folder(env / "d")
    args = []
    if case == "empty_class":
        (root / "empty_one").mkdir()
    elif case == "no_images":
        root = env / "nothing"
        root.mkdir()
        (root / "notes.txt").write_text("x")
    elif case == "missing_prompt":
        (env / "bad.json").write_text(json.dumps({k: v for k, v in PROMPTS.items() if k != "red circle"}))
        args = ["--data.prompts", "bad.json"]
    else:
        for p in sorted((root / "red_circle").iterdir())[2:]:
            p.unlink()
    argv = ["fit", "--data", "FewShotImageFolder", "--data.root", str(root), "--model", "StoriClassifier", *TINY,
            "--data.num_workers", "0", *args, *QUIET, "--trainer.max_epochs", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("stori fit: error: ")]
    assert len(err) == 1 and "Traceback" not in stderr
    assert re.search(message, err[0]), err[0]
    assert encode_counter.images == 0  # found before any image is encoded


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["stori-tiny", "stori-tiny-sig"])  # a causal CLIP tower, a SigLIP-architecture one
@pytest.mark.parametrize("model", ["StoriClassifier", "TaskRes", "CoOp", "IntCoOp", "TipAdapter", "LinearProbe",
                                   "ZeroShotCLIP"])
def test_every_baseline_trains_on_own_folder(env, model, clip):
    """SToRI and every baseline train and test on the folder, with CLIP's causal text tower and with the
    bidirectional SigLIP-architecture one (``stori-tiny-sig``: no causal mask, last-position pooling, logit_bias)."""
    make_folder(env / "mydata")
    command = "test" if model == "ZeroShotCLIP" else "fit"  # nothing to train
    argv = [command, "--data", "FewShotImageFolder", "--data.root", "mydata", "--data.prompts", "prompts.json",
            "--data.shots", "2", "--model", model, "--model.clip_model", clip, "--model.pretrained", "null",
            "--data.num_workers", "0", *QUIET, "--trainer.max_epochs", "1"]
    if model == "StoriClassifier":
        argv += ["--model.start_block", "3"]  # of the tiny towers' 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    (result,) = (env / "runs").rglob("test_results.json")
    data = json.loads(result.read_text())
    assert data["dataset"] == "FewShotImageFolder" and data["method"] == model and data["clip_model"] == clip
    assert 0.0 <= data["metrics"]["test/acc"] <= 1.0
