"""`stori cache` encodes a config's images under a Lightning Trainer; a later run encodes nothing."""

from __future__ import annotations

import pytest
import torch
import yaml
from fakedata import make_fake

import stori_pl.data.features as F
from stori_pl.cli import run_command
from stori_pl.cli.cache import load_config
from stori_pl.cli.common import split_overrides
from stori_pl.data import DTD


def test_cache_command_fills_the_cache(tmp_path, tiny_clip, encode_counter):
    fake = make_fake("dtd", tmp_path / "data")
    cfg = {"model": {"class_path": "stori_pl.models.StoriClassifier",
                     "init_args": {"clip_model": "stori-tiny", "pretrained": None}},
           "data": {"class_path": "stori_pl.data.DTD",
                    "init_args": {"root": "elsewhere", "shots": 2, "cupl": str(fake.cupl), "num_workers": 0,
                                  "cache_dir": str(tmp_path / "cache")}}}
    path = tmp_path / "dtd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = ["--config", str(path), "--accelerator", "cpu", "--devices", "1", "--batch_size", "4",
            "--data.root", str(fake.root)]
    assert run_command("cache", argv) == 0
    assert encode_counter.calls > 0
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3
    assert not list((tmp_path / "cache" / "features").glob(".shards-*"))
    encode_counter.calls = 0
    dm = DTD(root=str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(fake.cupl),
             num_workers=0, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert encode_counter.calls == 0  # everything came from the command's cache
    paths, _ = dm.image_lists(["val"])["val"]
    direct, _ = F.image_features(paths, "stori-tiny", None, cache_dir=tmp_path / "other", progress=False)
    torch.testing.assert_close(dm.val_dataloader().dataset.features, direct)
    encode_counter.calls = 0
    assert run_command("cache", argv) == 0 and encode_counter.calls == 0  # nothing left to encode


def test_cache_command_config_errors(tmp_path, capsys):
    from stori_pl.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": {"clip_model": "stori-tiny"}}}))
    with pytest.raises(ValueError, match="data.class_path"):
        run_command("cache", ["--config", str(path)])
    with pytest.raises(ValueError, match="unknown option --trainer.devices"):
        run_command("cache", ["--config", str(path), "--trainer.devices", "2"])
    assert main(["cache", "--config", str(path), "--trainer.devices=2"]) == 2
    assert capsys.readouterr().err.startswith("stori cache: error: unknown option --trainer.devices (use --data.")
    assert main(["cache", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "stori cache: error: config" in capsys.readouterr().err  # neither a file nor a shipped config
    rest, overrides = split_overrides(["-c", "a.yaml", "--data.root=/d", "--devices", "2", "--model.pretrained",
                                                 "openai"])
    assert rest == ["-c", "a.yaml", "--devices", "2"] and overrides == {"data.root": "/d", "model.pretrained": "openai"}
    cls, args = load_config([str(path)], {"data.class_path": "DTD", "data.shots": "4"})
    assert cls is DTD and args == {"shots": 4, "clip_model": "stori-tiny"}
