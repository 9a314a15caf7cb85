"""load_clip: frozen models, memoization, local checkpoints, clear errors; text-tower adapter."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from stori_pl import WeightedTextEncoder, load_clip
from stori_pl.text.clip import RandomWeightsWarning, model_fingerprint, text_tower


def test_frozen_eval_and_memoized(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert load_clip("stori-tiny", pretrained=None)[0] is model
    assert tokenizer(["a photo"]).shape == (1, 77)
    assert callable(preprocess)


def test_memo_is_one_copy_moved_where_asked(tiny_clip, monkeypatch):
    """The memo is keyed by what the copy holds, not by a device: asking for a device moves the same object, not
    asking leaves it where it is (no GPU needed to check it: ``.to`` is recorded)."""
    model = tiny_clip[0]
    moves = []
    monkeypatch.setattr(model, "to", lambda device: moves.append(str(device)) or model)
    assert load_clip("stori-tiny", pretrained=None, device="cuda:1")[0] is model
    assert load_clip("stori-tiny", pretrained=None)[0] is model  # no device: left where it is
    assert load_clip("stori-tiny", pretrained=None, device="cpu")[0] is model
    assert moves == ["cuda:1", "cpu"]


def test_random_init_warns():
    from stori_pl.text.clip import _LOADED

    _LOADED.pop(("stori-tiny", None, "fp16", None), None)
    with pytest.warns(RandomWeightsWarning, match="meaningless"):
        load_clip("stori-tiny", None, precision="fp16")


def test_local_checkpoint_file(tmp_path, tiny_clip):
    model, _, _ = tiny_clip
    state = {k: v.clone().contiguous() + 1.0 for k, v in model.state_dict().items() if v.is_floating_point()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    loaded, _, _ = load_clip("stori-tiny", pretrained=str(path))
    torch.testing.assert_close(loaded.text_projection, model.text_projection + 1.0)
    assert "file:" in model_fingerprint("stori-tiny", str(path))


def test_errors_name_close_matches():
    with pytest.raises(ValueError, match=r"unknown CLIP model 'ViT-B-23'.*ViT-B-32"):
        load_clip("ViT-B-23")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'opnai'.*openai"):
        load_clip("ViT-B-32", pretrained="opnai")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("ViT-B-32", pretrained="/nope/model.safetensors")
    with pytest.raises(ValueError, match="no builtin weights for 'ViT-B-32'"):
        load_clip("ViT-B-32", pretrained="builtin")
    with pytest.raises(ValueError, match="precision"):
        load_clip("ViT-B-32", precision="fp8")


def test_unsupported_text_tower_is_named(tiny_clip):
    class HFLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(2, 2)

    fake = HFLike()
    fake.stori_model_name = "hf-roberta-clip"
    with pytest.raises(NotImplementedError, match="hf-roberta-clip: text tower Linear is not supported"):
        WeightedTextEncoder(fake)
    tower = text_tower(tiny_clip[0])
    assert tower.num_heads == 4 and len(tower.blocks) == 4 and tower.pool_type == "argmax"
