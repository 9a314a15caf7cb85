"""`stori embed` and `stori retrieve` end to end with the tiny random CLIP and generated images."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from stori_pl.cli import main

TINY = ["--model", "stori-tiny", "--pretrained", "null", "--start_block", "2"]


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


def test_embed_shows_emoji_and_non_ascii_tokens_as_text(tiny_clip, capsys):
    """BPE pieces are decoded from bytes: no 'ðŁĺ' in the token column; a split character is shown once."""
    from stori_pl.cli.embed import token_pieces

    assert main(["embed", "a (red:1.5) 🚗 next to a café 日本語", *TINY]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["🚗"][0] == "1" and rows["🚗"][1].startswith("🚗")
    assert rows["café"][1] == "café"
    assert re.sub(r"\[\d+ tokens\]| ", "", " ".join(rows["日本語"][1:])) == "日本語"  # a split character: once
    assert not any("ð" in cell or "Ã" in cell for row in rows.values() for cell in row)
    _, _, tok = tiny_clip
    ids = tok.encode("🫠")  # three byte-level BPE tokens for one 4-byte character
    assert len(ids) > 1 and token_pieces(ids, tok) == [f"🫠[{len(ids)} tokens]"]
    assert token_pieces(tok.encode("red car"), tok) == ["red", "car"]


def test_embed_errors(tmp_path, capsys):
    assert main(["embed", "a (red car", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stori embed: error: ") and "column 3" in err and "Traceback" not in err
    assert main(["embed", "a car", *TINY, "--out", str(tmp_path / "x.pkl")]) == 2
    assert ".npy or .safetensors" in capsys.readouterr().err
    assert main(["embed", "a car", "--model", "ViT-B-3", "--pretrained", "null"]) == 2
    assert "unknown CLIP model 'ViT-B-3'" in capsys.readouterr().err


def test_retrieve_ranks_caches_and_writes(images, tmp_path, tiny_clip, capsys, encode_counter):
    args = ["retrieve", "--images", str(images), "--prompts+", "a (green:2) square", "--prompts+", "a red square",
            *TINY, "--top_k", "3", "--out", str(tmp_path / "rank.csv"), "--sheet", str(tmp_path / "top.png")]
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

    assert encode_counter.calls > 0  # the first query encoded the folder
    encode_counter.calls = 0  # second query over the same folder: features from the cache only
    json_out = tmp_path / "rank.json"
    assert main(["retrieve", "--images", str(images), "--prompts", "[a blue (square:0.5)]", *TINY,
                 "--top_k", "0", "--out", str(json_out)]) == 0
    assert encode_counter.calls == 0
    assert "broken.jpg" in capsys.readouterr().err  # still listed on a cache hit
    ranking = json.loads(json_out.read_text())["a blue (square:0.5)"]
    assert len(ranking) == 5 and ranking[0]["rank"] == 1 and any("sub" in r["path"] for r in ranking)


def test_retrieve_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    assert main(["retrieve", "--images", str(tmp_path / "empty"), "--prompts+", "x", *TINY]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path / "missing"), "--prompts+", "x", *TINY]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path), "--prompts+", "(x:-1)", *TINY]) == 2
    assert "≥ 0" in capsys.readouterr().err
    assert main(["retrieve", "--images", str(tmp_path), "--prompts+", "x", "--out", "r.txt", *TINY]) == 2
