"""The image tower run block by block (stori_pl/image/tower.py): parity with open_clip's encode_image."""

from __future__ import annotations

import warnings

import pytest
import torch

from stori_pl.image import tower
from stori_pl.text.clip import load_clip


def _clip(name, pretrained):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model, _, _ = load_clip(name, pretrained)
    return model


def _images(model, n):
    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    torch.manual_seed(1)
    return torch.randn(n, 3, *size)


@pytest.fixture(scope="module", params=[("stori-toy", "builtin"), ("stori-tiny", None)])
def clip_and_images(request):
    model = _clip(*request.param)
    return model, _images(model, 2)


def test_identity_edit_equals_encode_image_vit_b32():
    """The real ViT-B/32 architecture (random init): one image, an edit after block 6 of 12 (CPU-cheap)."""
    model = _clip("ViT-B-32", None)
    x = _images(model, 1)
    with torch.no_grad():
        ref = model.encode_image(x)
        out = tower.embed_with_cls_edit(model, x, 6, lambda c: c)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_identity_edit_equals_encode_image(clip_and_images):
    model, x = clip_and_images
    ref = model.encode_image(x)
    n = tower.n_vision_blocks(model)
    for block in (1, n // 2 or 1, n, -1, -2):
        out = tower.embed_with_cls_edit(model, x, block, lambda c: c)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(tower.embed_with_cls_edit(model, x, -1), ref, atol=1e-5, rtol=0)


def test_readout_exact_after_last_block_only(clip_and_images):
    model, x = clip_and_images
    ref = model.encode_image(x)
    torch.testing.assert_close(tower.cls_readout(model, tower.cls_activation(model, x, -1)), ref, atol=1e-5, rtol=0)
    early = tower.cls_readout(model, tower.cls_activation(model, x, 1))
    assert (early - ref).abs().max() > 1e-3  # the Logit-Lens approximation is not exact before the last block


def test_residual_stream_blocks_and_negative_index(clip_and_images):
    model, x = clip_and_images
    n = tower.n_vision_blocks(model)
    last = tower.residual_stream(model, x, n)
    assert last.shape[:2] == (2, 1 + (x.shape[-1] // model.visual.patch_size[0]) ** 2)
    torch.testing.assert_close(tower.residual_stream(model, x, -1), last)
    torch.testing.assert_close(tower.cls_activation(model, x, -2), tower.residual_stream(model, x, n - 1)[:, 0])
    assert not torch.allclose(tower.residual_stream(model, x, 1), last)


def test_cls_edit_changes_embedding_and_carries_gradients():
    model = _clip("stori-toy", "builtin")
    x = torch.randn(2, 3, 64, 64)
    ref = model.encode_image(x)
    shift = torch.zeros(128, requires_grad=True)
    out = tower.embed_with_cls_edit(model, x, 2, lambda c: c + shift)
    out.sum().backward()
    assert shift.grad is not None and shift.grad.abs().sum() > 0
    out2 = tower.embed_with_cls_edit(model, x, 2, lambda c: torch.zeros_like(c))
    assert (out2 - ref).abs().max() > 1e-2


def test_bad_block_is_refused():
    model = _clip("stori-toy", "builtin")
    for bad in (0, 7, -7, 1.5):
        with pytest.raises(ValueError, match="1..6"):
            tower.resolve_block(model, bad)
    assert tower.resolve_block(model, -1) == 6 and tower.resolve_block(model, -6) == 1
