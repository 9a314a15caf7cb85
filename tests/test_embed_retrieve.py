"""`stori embed` and `stori retrieve` end to end with the tiny random CLIP and generated images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from stori_pl.cli import main

TINY = ["--model", "stori-tiny", "--pretrained", "null", "--start-block", "2"]


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (36, 30), (50 * i, 255 - 40 * i, 128)).save(folder / ("sub" if i == 4 else "") / f"im{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_embed_prints_words_and_saves(tmp_path, tiny_clip, capsys):
    out = tmp_path / "emb.npy"
    assert main(["embed", "a photo of a (red:1.5) (supercalifragilistic:0.5) car", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["red"][1] == "1.5" and lines["car"][1] == "1"
    assert lines["supercalifragilistic"][1] == "0.5" and len(lines["supercalifragilistic"]) > 3  # several tokens
    emb = np.load(out, allow_pickle=False)
    assert emb.shape == (32,) and np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5)

    from safetensors.torch import load_file

    from stori_pl import WeightedTextEncoder

    st = tmp_path / "emb.safetensors"
    assert main(["embed", "a photo of a (red:1.5) (supercalifragilistic:0.5) car", *TINY, "--out", str(st)]) == 0
    model, _, tok = tiny_clip
    ref = WeightedTextEncoder(model, start_block=2).encode_prompts(
        ["a photo of a (red:1.5) (supercalifragilistic:0.5) car"], tok)[0]
    assert torch.allclose(load_file(st)["embedding"], ref, atol=1e-5)
    assert np.allclose(emb, ref.numpy(), atol=1e-5)


def test_embed_errors(tmp_path, capsys):
    assert main(["embed", "a (red car", *TINY]) == 2
    assert "column 3" in capsys.readouterr().err
    assert main(["embed", "a car", *TINY, "--out", str(tmp_path / "x.pkl")]) == 2
    assert ".npy or .safetensors" in capsys.readouterr().err


def test_retrieve_ranks_caches_and_writes(images, tmp_path, tiny_clip, capsys):
    import stori_pl.data.features as F

    args = ["retrieve", "--images", str(images), "--prompt", "a (green:2) square", "--prompt", "a red square",
            *TINY, "--top-k", "3", "--out", str(tmp_path / "rank.csv"), "--sheet", str(tmp_path / "top.png")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image(s)" in captured.err and "broken.jpg" in captured.err
    rows = list(csv.DictReader(open(tmp_path / "rank.csv")))
    assert len(rows) == 6 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert {r["prompt"] for r in rows} == {"a (green:2) square", "a red square"}
    scores = [float(r["score"]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True) and not any("broken" in r["path"] for r in rows)
    png = (tmp_path / "top.png").read_bytes()
    assert png[:4] == b"\x89PNG"

    calls = F.ENCODE_CALLS  # second query over the same folder: features from the cache only
    json_out = tmp_path / "rank.json"
    assert main(["retrieve", "--images", str(images), "--prompt", "a blue (square:0.5)", *TINY,
                 "--top-k", "0", "--out", str(json_out)]) == 0
    assert F.ENCODE_CALLS == calls
    assert "broken.jpg" in capsys.readouterr().err  # still listed on a cache hit
    ranking = json.loads(json_out.read_text())["a blue (square:0.5)"]
    assert len(ranking) == 5 and ranking[0]["rank"] == 1 and any("sub" in r["path"] for r in ranking)


def test_retrieve_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    assert main(["retrieve", "--images", str(tmp_path / "empty"), "--prompt", "x", *TINY]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path / "missing"), "--prompt", "x", *TINY]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path), "--prompt", "(x:-1)", *TINY]) == 2
    assert "≥ 0" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path), "--prompt", "x", "--out", "r.txt", *TINY]) == 2
