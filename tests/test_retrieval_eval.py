"""Attribute datasets (CelebA, CUB, CSV), App. C.1 prompt weighting, and the Table-3 runner on fake layouts."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from stori_pl.retrieval.attributes import (
    build_pool,
    load_attribute_csv,
    load_attributes,
    load_celeba,
    load_cub,
)
from stori_pl.retrieval.runner import (
    AttributeTask,
    format_report_table,
    run_preference_retrieval,
    task_prompt,
)

CELEBA_ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Eyeglasses", "Smiling"]


def _image(path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (255 * (code & 1), 255 * ((code >> 1) & 1), 255 * ((code >> 2) & 1))
    Image.new("RGB", (40, 48), color).save(path)


def make_celeba(root, per_code: int = 3):
    """torchvision layout; image i has Blond_Hair, Eyeglasses, Smiling = bits of i % 8."""
    base = root / "celeba"
    lines = [str(8 * per_code), " ".join(CELEBA_ATTRS)]
    for i in range(8 * per_code):
        name, code = f"{i + 1:06d}.jpg", i % 8
        _image(base / "img_align_celeba" / name, code)
        bits = [-1] + [1 if (code >> a) & 1 else -1 for a in range(3)]
        lines.append(name + "  " + " ".join(f"{b:2d}" for b in bits))
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root


def make_cub(root, per_code: int = 2):
    """Official archive layout: attributes.txt next to CUB_200_2011/."""
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    names = ["has_wing_color::black", "has_breast_color::yellow", "has_bill_shape::cone", "has_size::small_(5_-_9_in)"]
    (root / "attributes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    images, labels = [], []
    for i in range(8 * per_code):
        rel, code = f"001.Bird/bird_{i}.jpg", i % 8
        _image(cub / "images" / rel, code)
        images.append(f"{i + 1} {rel}")
        for a in range(4):
            extra = " 0" if (i, a) == (0, 0) else ""  # the official file has a few 6-field lines
            labels.append(f"{i + 1} {a + 1} {int(a < 3 and (code >> a) & 1)} 3 1.5{extra}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def test_celeba_reader_and_pool(tmp_path):
    ds = load_celeba(make_celeba(tmp_path))
    assert ds.attributes == CELEBA_ATTRS and ds.labels.shape == (24, 4)
    assert ds.paths[5].name == "000006.jpg" and ds.paths[5].is_file()
    assert ds.column("Eyeglasses")[:8].tolist() == [bool((c >> 1) & 1) for c in range(8)]
    idx, cats = build_pool(ds, ["Blond_Hair", "Eyeglasses", "Smiling"], per_category=2, seed=0)
    assert len(idx) == 16 and torch.bincount(cats).tolist() == [2] * 8
    assert all(i % 8 == int(c) for i, c in zip(idx, cats))  # category id = bits of the attributes
    assert build_pool(ds, ["Blond_Hair", "Eyeglasses", "Smiling"], 2, seed=0)[0] == idx  # seeded
    with pytest.warns(UserWarning, match="fewer than 5"):
        build_pool(ds, ["Blond_Hair", "Eyeglasses", "Smiling"], per_category=5)
    with pytest.raises(KeyError, match=r"'Blond_Hiar'.*Did you mean \['Blond_Hair'\].*Valid names: 5_o_Clock"):
        build_pool(ds, ["Blond_Hiar", "Eyeglasses", "Smiling"])
    with pytest.raises(ValueError, match="no image of category"):
        build_pool(ds, ["5_o_Clock_Shadow", "Eyeglasses", "Smiling"])


def test_cub_and_csv_readers(tmp_path):
    ds = load_cub(make_cub(tmp_path / "cub"))
    assert ds.labels.shape == (16, 4) and ds.attributes[3] == "has_size::small_(5_-_9_in)"
    assert ds.column("has_bill_shape::cone")[:8].tolist() == [bool((c >> 2) & 1) for c in range(8)]
    assert ds.paths[0].is_file()
    root = tmp_path / "toy"
    _image(root / "a.png", 1), _image(root / "b.png", 2)
    (root / "attributes.csv").write_text("image,red,green\na.png,1,0\nb.png,false,TRUE\n")
    ds = load_attributes("csv", root)
    assert ds.attributes == ["red", "green"] and ds.labels.tolist() == [[True, False], [False, True]]
    (root / "attributes.csv").write_text("image,red\na.png,maybe\n")
    with pytest.raises(ValueError, match="line 2, column 'red'.*not binary"):
        load_attribute_csv(root)
    with pytest.raises(FileNotFoundError, match="CelebA attribute file"):
        load_celeba(tmp_path)
    with pytest.raises(ValueError, match="unknown attribute dataset"):
        load_attributes("imagenet", tmp_path)


def test_task_prompt_escapes_and_weights():
    task = AttributeTask(["A_b", "C", "D"], "a (photo) of {0}, {1}: {2}.")
    assert task_prompt(task) == "a \\(photo\\) of a b, c\\: d."
    assert task_prompt(task, 1, 1.5) == "a \\(photo\\) of a b, (c:1.5)\\: d."
    with pytest.raises(ValueError, match="must use"):
        task_prompt(AttributeTask(["A"], "{3}"))


def test_prompt_weighting_parity(tiny_clip):
    from stori_pl.text.encoder import WeightedTextEncoder
    from stori_pl.text.prompt_weighting import encode_weighted

    model, _, tok = tiny_clip
    enc = WeightedTextEncoder(model, start_block=2)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(tok(["a photo of a red car"])), dim=-1)
    for method in ("stori", "prompt_weighting"):
        same = encode_weighted(enc, ["a photo of a (red:1) car"], tok, method)
        assert torch.allclose(same, ref, atol=1e-5), method  # weight 1 = plain CLIP
        moved = encode_weighted(enc, ["a photo of a (red:3) car"], tok, method)
        assert not torch.allclose(moved, ref, atol=1e-4), method
    a, b = (encode_weighted(enc, ["a (red:0) car"], tok, m) for m in ("stori", "prompt_weighting"))
    assert not torch.allclose(a, b, atol=1e-4)  # two different methods
    with pytest.raises(ValueError, match="unknown weighting method"):
        encode_weighted(enc, ["x"], tok, "magic")


@pytest.mark.slow
def test_runner_report_and_figures(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    ds = load_celeba(make_celeba(tmp_path / "data"))
    tasks = [AttributeTask(["Blond_Hair", "Eyeglasses", "Smiling"], "a photo of a {2} person with {0} wearing {1}.")]
    report = run_preference_retrieval(
        ds, tasks, "stori-tiny", None, start_block=2, per_category=2, weights=[0.5, 1.5], top_k=[3, 5],
        methods=["stori", "prompt_weighting"], sweep=[0.0, 1.0, 2.0], out_dir=tmp_path / "out")
    assert len(report["rows"]) == 3 * 2 * 3  # attributes × methods × (plain, 0.5, 1.5)
    assert report["rows"][1]["prompt"] == "a photo of a smiling person with (blond hair:0.5) wearing eyeglasses."
    for method in ("stori", "prompt_weighting"):
        block = report["summary"][method]
        assert list(block) == ["plain", "w=0.5", "Δw=0.5", "w=1.5", "Δw=1.5"]
        assert set(block["plain"]) == {"AP", "P@3", "P@5"} and all(0 <= v[0] <= 1 for v in block["w=1.5"].values())
    auc = report["auc"][0]
    assert len(auc["categories"]) == 8 and torch.tensor(auc["auc"]["stori"]).shape == (3, 8)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"] == report["summary"]
    assert len(report["figures"]) == 6 and all((tmp_path / "out" / f).is_file() for f in report["figures"])
    table = format_report_table(report)
    assert "| stori | Δw=1.5 |" in table and "± " in table


def test_retrieval_eval_cli_on_cub(tmp_path, tiny_clip, monkeypatch, capsys):
    from stori_pl.cli import main

    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    make_cub(tmp_path / "cub")
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"dataset: cub\nroot: {tmp_path / 'cub'}\nmodel: stori-tiny\npretrained: null\nstart_block: 2\n"
        f"per_category: 2\ntop_k: [4]\nout_dir: {tmp_path / 'out'}\n"
        "tasks:\n  - attributes: [has_wing_color::black, has_breast_color::yellow, has_bill_shape::cone]\n"
        "    prompt: 'a photo of a bird with {0}, a {1} and a {2}.'\n")
    assert main(["retrieval-eval", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| stori | plain |" in out and "P@4" in out and (tmp_path / "out" / "table.md").is_file()
    assert main(["retrieval-eval", "--config", str(config), "--tasks",
                 '[{"attributes": ["has_wing_colour::black", "b", "c"], "prompt": "{0} {1} {2}"}]']) == 2
    assert "has_wing_color::black" in capsys.readouterr().err  # suggests / lists valid names
