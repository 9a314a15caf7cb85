"""The toy world: determinism, captions, held-out triples, benchmark layouts, the pre-training command."""

from __future__ import annotations

import csv
import hashlib
import json
import random

import numpy as np
import pytest
import torch

from stori_pl.toy import data as toy
from stori_pl.toy import world as toy_world


def test_render_is_deterministic_and_shaped():
    obj = toy_world.ToyObject("star", "red", "striped", "large", "white")
    a = toy_world.render(obj, random.Random(3))
    b = toy_world.render(obj, random.Random(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, toy_world.render(obj, random.Random(4)))  # position/phase/noise vary


def test_render_shows_the_attributes():
    rng = random.Random(0)
    red = toy_world.render(toy_world.ToyObject("circle", "red", "plain", "large", "white"), rng).astype(int)
    center = red[16:48, 16:48].reshape(-1, 3)
    # a large red circle covers a lot of reddish pixels; the white background stays bright
    assert ((center[:, 0] > 150) & (center[:, 1] < 90)).mean() > 0.3
    small = toy_world.render(toy_world.ToyObject("circle", "red", "plain", "small", "white"), rng).astype(int)
    is_red = lambda im: ((im[..., 0] > 150) & (im[..., 1] < 90)).sum()  # noqa: E731
    assert is_red(red) > 1.6 * is_red(small)  # radii 17-21 vs 10-13: area ratio >= 1.7
    striped = toy_world.render(toy_world.ToyObject("square", "blue", "striped", "large", "white"), rng)
    plain = toy_world.render(toy_world.ToyObject("square", "blue", "plain", "large", "white"), rng)
    dark = lambda im: (im.max(-1) < 90).sum()  # noqa: E731 - pattern ink is dark
    assert dark(striped) > 100 > dark(plain)


def test_captions_mention_exactly_what_they_claim():
    rng = random.Random(1)
    for _ in range(500):
        obj = toy_world.sample_object(rng, distractor=0.5, kind=0.35)
        cap = toy_world.describe(obj, rng)
        text, claims = cap.text, cap.claims
        assert claims, text
        assert toy_world.consistent([obj], [claims])[0, 0], (text, obj)  # a noise-free caption fits its scene
        words = cap.words
        for key, idx in cap.spans.items():  # each claim's words are in the caption, at its span
            said = " ".join(words[i] for i in idx)
            assert claims[key] in said or toy_world._SYNONYMS.get(claims[key], "?") in said or key == "pattern", (key, text)
        if "color" not in claims:
            assert not any(w in toy_world.ATTRIBUTES["color"] for w in words[: words.index(next(
                w for w in words if w in (*toy_world.ATTRIBUTES["shape"], *toy_world.KINDS, "shape", "object", "thing")))])
        if "background" not in claims:
            assert "background" not in text
        if "kind" in claims:
            assert obj.kind == claims["kind"] and not {"shape", "color", "pattern"} & claims.keys()
        if "d_color" in claims or "d_shape" in claims:
            assert obj.d_shape is not None


def test_kinds_are_ambiguous_without_their_state():
    """The two nouns of a shape share every color and pattern word; the state picks one look."""
    by_shape: dict[str, list[str]] = {}
    for noun, states in toy_world.KINDS.items():
        assert len({look[0] for look in states.values()}) == 1 and len(set(states.values())) == 2
        by_shape.setdefault(states["wet"][0], []).append(noun)
    for shape, nouns in by_shape.items():
        assert len(nouns) == 2, shape
        bags = [sorted(w for look in toy_world.KINDS[n].values() for w in look) for n in nouns]
        assert bags[0] == bags[1], nouns  # the same words: only their binding to the state differs
    assert len(toy_world.LOOK_KIND) == 16
    assert not toy_world.HELDOUT & set(toy_world.LOOK_KIND)  # kinds' looks are seen in pre-training
    scene = toy_world.ToyObject("circle", "red", "striped", "large", "white")
    assert (scene.kind, scene.state) == ("blicket", "wet")


def test_consistency_matrix():
    a = toy_world.ToyObject("circle", "red", "striped", "small", "gray")  # a wet blicket
    b = toy_world.ToyObject("square", "red", "dotted", "large", "white", "star", "blue", "top left")
    m = toy_world.consistent([a, b], [{"color": "red"}, {"shape": "square", "color": "red"}, {"kind": "blicket"},
                                      {"kind": "blicket", "state": "dry"}, {"d_color": "blue", "d_shape": "star"},
                                      {"d_color": "red"}])
    assert m.tolist() == [[True, False, True, False, False, False], [True, True, False, False, True, False]]


def test_distractor_is_drawn_in_its_corner():
    rng = random.Random(0)
    plain = toy_world.ToyObject("circle", "red", "plain", "small", "white")
    with_d = toy_world.ToyObject("circle", "red", "plain", "small", "white", "square", "blue", "top right")
    a, b = toy_world.render(plain, random.Random(5)), toy_world.render(with_d, random.Random(5))
    blue = lambda im: ((im[..., 2] > 150) & (im[..., 0] < 100))  # noqa: E731
    assert blue(b)[:16, 48:].sum() > 30 and blue(a).sum() == 0 and blue(b)[16:, :].sum() == 0
    assert toy_world.sample_object(rng, d_color="green").d_color == "green"


def test_heldout_triples_never_sampled_for_training():
    rng = random.Random(0)
    seen = {toy_world.sample_object(rng).triple for _ in range(3000)}
    assert not seen & toy_world.HELDOUT
    assert all(toy_world.sample_object(rng, heldout=True).triple in toy_world.HELDOUT for _ in range(50))
    for key in ("shape", "color", "pattern"):  # every value still appears in training
        idx = ("shape", "color", "pattern").index(key)
        assert {t[idx] for t in seen} == set(toy_world.ATTRIBUTES[key])
    with pytest.raises(ValueError, match="unknown toy attribute"):
        toy_world.sample_object(rng, color="teal")


def test_write_toy_shapes_coop_layout(tmp_path):
    folder = toy.write_toy_shapes(tmp_path, n_train=2, n_val=1, n_test=1)
    split = json.loads((folder / toy.SPLIT_FILE).read_text())
    assert set(split) == {"train", "val", "test"}
    assert len(split["train"]) == 2 * len(toy.TOY_CLASSES) >= 20
    impath, label, name = split["test"][0]
    assert (folder / "images" / impath).is_file() and name == "plain red circle" and label == 0
    assert len(toy.TOY_CLASSES) == 48
    cupl = json.loads((folder / toy.CUPL_FILE).read_text())
    assert set(cupl) == {toy.classname(*c) for c in toy.TOY_CLASSES}
    assert all(len(v) == 8 for v in cupl.values())
    # sentences mix discriminative words with details that are not (size, background)
    s = " ".join(cupl["dotted blue square"])
    assert "dotted" in s and "blue" in s and "background" in s and ("large" in s or "small" in s)
    # deterministic
    again = toy.write_toy_shapes(tmp_path / "b", n_train=2, n_val=1, n_test=1)
    assert (again / "images" / impath).read_bytes() == (folder / "images" / impath).read_bytes()
    # about half of the scenes have a distractor, recorded per image
    attrs = json.loads((folder / toy.IMAGE_ATTRIBUTES_FILE).read_text())
    assert 0.3 < sum(a["d_color"] is not None for a in attrs.values()) / len(attrs) < 0.7


def test_spurious_variant_correlates_the_distractor_with_class_in_train_only(tmp_path):
    folder = toy.write_toy_benchmark(tmp_path, toy.SPURIOUS_SPEC, n_train=4, n_val=2, n_test=4)
    split = json.loads((folder / toy.SPLIT_FILE).read_text())
    attrs = json.loads((folder / toy.IMAGE_ATTRIBUTES_FILE).read_text())
    for impath, label, _ in split["train"]:
        assert attrs[impath]["d_color"] == toy.spurious_color(toy.TOY_CLASSES[label]) != attrs[impath]["color"]
    test = [attrs[e[0]]["d_color"] == toy.spurious_color(toy.TOY_CLASSES[e[1]]) for e in split["test"]]
    assert sum(test) / len(test) < 0.3  # independent of class at test time (1 in 2 x 6 by chance)
    # classes that differ only in color get different distractor colors
    assert toy.spurious_color(("plain", "red", "circle")) != toy.spurious_color(("plain", "blue", "circle"))
    cupl = json.loads((folder / toy.CUPL_FILE).read_text())
    assert sum("next to a small" in t for t in cupl["plain red circle"]) == 4


def test_kinds_benchmark_classes_are_nouns_in_two_states(tmp_path):
    folder = toy.write_toy_benchmark(tmp_path, toy.KINDS_SPEC, n_train=8, n_val=1, n_test=1)
    split = json.loads((folder / toy.SPLIT_FILE).read_text())
    attrs = json.loads((folder / toy.IMAGE_ATTRIBUTES_FILE).read_text())
    assert [e[2] for e in split["train"][::8]] == list(toy_world.KINDS)
    for impath, _, name in split["train"]:
        a = attrs[impath]
        assert a["kind"] == name and toy_world.KINDS[name][a["state"]] == (a["shape"], a["color"], a["pattern"])
    assert {attrs[e[0]]["state"] for e in split["train"]} == set(toy_world.STATES)


@pytest.mark.filterwarnings("ignore::stori_pl.text.clip.RandomWeightsWarning")
def test_toy_shapes_datamodule_generates_and_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    orig = toy.write_toy_benchmark
    monkeypatch.setattr(toy, "write_toy_benchmark", lambda root, spec: orig(root, spec, n_train=3, n_val=1, n_test=2))
    dm = toy.ToyShapes(root=str(tmp_path / "data"), clip_model="stori-tiny", pretrained=None, shots=2,
                       batch_size=8)
    dm.prepare_data()
    assert "ToyShapes: generating the toy benchmark" in capsys.readouterr().out  # once, on first use
    dm.prepare_data()
    assert "generating" not in capsys.readouterr().out
    dm.setup("fit")
    assert (tmp_path / "data" / "toy_shapes" / toy.SPLIT_FILE).is_file()
    assert dm.classnames[:2] == ["plain red circle", "striped red circle"]
    batches = list(dm.train_dataloader())
    assert batches[0]["features"].shape == (8, dm.feature_dim) and batches[0]["label"].dtype == torch.long
    labels = torch.cat([b["label"] for b in batches])  # the whole 2-shot train split: 2 images of each class
    assert torch.bincount(labels, minlength=len(dm.classnames)).tolist() == [2] * len(dm.classnames)
    prompts = dm.prompt_set()
    assert prompts.base[0] == ["a photo of a plain red circle."]
    assert len(prompts.cupl[0]) == 8 and "red" in prompts.cupl[0][0]


def test_write_toy_attributes_csv(tmp_path):
    tasks = toy.TOY_RETRIEVAL_TASKS[:1]
    folder = toy.write_toy_attributes(tmp_path, per_category=2, tasks=tasks)
    with open(folder / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and (folder / rows[0]["image"]).is_file()
    # each image has exactly one value per attribute kind
    colors = toy_world.ATTRIBUTES["color"]
    assert all(sum(int(r[c]) for c in colors) == 1 for r in rows)
    # the 8 categories of the task's 3 attributes are balanced
    codes = [tuple(r[a] for a in tasks[0]["attributes"]) for r in rows]
    assert len(set(codes)) == 8 and all(codes.count(c) == 2 for c in set(codes))
    ds = toy.load_toy_attributes(tmp_path)
    assert ds.labels.shape == (16, len(toy.attribute_columns()))
    assert toy.retrieval_task_phrases(toy.TOY_RETRIEVAL_TASKS[3]) == ["yellow", "stripes", "star"]
    assert toy.retrieval_task_phrases(toy.TOY_RETRIEVAL_TASKS[7])[2] == "white"


def test_toy_pretrain_smoke(tmp_path):
    from stori_pl.cli import toy_pretrain

    out = tmp_path / "toy"
    rc = toy_pretrain.main(["--steps", "2", "--batch_size", "16", "--eval_images", "30", "--eval_every", "0",
                            "--warmup", "1", "--out", str(out)])
    assert rc == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["steps"] == 2 and set(meta["zero_shot_heldout"]) == set(toy_world.ATTRIBUTES)
    assert meta["world_version"] == 2 and set(meta["kinds"]) == {"name", "true_state", "wrong_state"}
    assert 0 <= meta["word_sensitivity_block7"] <= 2
    import open_clip
    from safetensors.torch import load_file

    from stori_pl.text.clip import register_model_configs

    path = out.with_suffix(".safetensors")
    assert meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # provenance names this file
    state = load_file(str(path))
    register_model_configs()
    torch.manual_seed(0)  # the run's seed: the same random init as the run started from
    init = open_clip.create_model("stori-toy").state_dict()
    assert set(state) == set(init) and all(v.dtype == torch.float16 for v in state.values())
    # two AdamW steps at lr 1e-3: measured max change 2.0e-3; fp16 rounding of the init alone: max 3.1e-5
    moved = (state["token_embedding.weight"].float() - init["token_embedding.weight"]).abs().max()
    assert moved > 1e-4, moved
    assert not out.with_suffix(".partial.safetensors").exists()


def test_checkpoint_of_other_builtin_weights_is_refused(tmp_path):
    """A checkpoint records which shipped stori-toy weights it was trained on; a v1 one is refused in one line."""
    from stori_pl.models import StoriClassifier
    from stori_pl.text.clip import builtin_version

    prompts = {"classnames": ["plain red circle", "striped red circle"],
               "base": [["a photo of a plain red circle."], ["a photo of a striped red circle."]],
               "cupl": [["a red circle."], ["a red striped circle."]]}
    model = StoriClassifier(clip_model="stori-toy", pretrained="builtin", start_block=7, prompts=prompts)
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["stori"]["builtin_version"] == builtin_version("stori-toy")
    assert builtin_version("stori-toy").startswith("v2:")
    model.on_load_checkpoint(checkpoint)  # its own weights: loads
    for old in ({"builtin_version": "v1:5369995c949a"}, {}):  # v1 checkpoints, with and without the field
        info = {k: v for k, v in checkpoint["stori"].items() if k != "builtin_version"} | old
        with pytest.raises(ValueError, match="train it again") as err:
            model.on_load_checkpoint({**checkpoint, "stori": info})
        assert "\n" not in str(err.value) and "v1" in str(err.value)
