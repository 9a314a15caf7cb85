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
