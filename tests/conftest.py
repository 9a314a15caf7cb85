"""Shared fixtures: tiny random CLIPs, the reference data folder, generated layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real CuPL / CoOp files); skips the test where the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_clip():
    """(model, preprocess, tokenizer) of the random-init ``stori-tiny`` CLIP (frozen, eval)."""
    from stori_pl import load_clip

    torch.manual_seed(0)
    return load_clip("stori-tiny", pretrained=None)


class EncodeCounter:
    """Counts image batches sent through a CLIP image encoder (``calls``) and the images in them (``images``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0


@pytest.fixture
def encode_counter(monkeypatch) -> EncodeCounter:
    """Wraps ``stori_pl.data.features.encode_batch`` (used by the feature cache and ``stori cache``) to count
    encoder calls in this process; a cache hit adds none."""
    import stori_pl.data.features as features

    counter, original = EncodeCounter(), features.encode_batch

    def counting(model, images, device):
        counter.calls += 1
        counter.images += images.shape[0]
        return original(model, images, device)

    monkeypatch.setattr(features, "encode_batch", counting)
    return counter
