"""Shared fixtures: tiny random CLIPs, the reference data folder, generated layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# ../shared/data next to the checkout; STORI_SHARED_DATA points elsewhere (e.g. at a missing folder, to see the skip)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SKIP = ("reference data {path} not present (only in the developers' workspace, ../shared/data): "
               "skipping comparison with the real CuPL/CoOp files")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder (real CuPL / CoOp files); skips the test, with one reason, where it is absent.

    Every test that reads ``../shared/data`` takes this fixture, so a user's clone shows a single grouped skip
    line (``pytest -rs``) instead of failures.
    """
    path = Path(os.environ.get("STORI_SHARED_DATA") or SHARED_DATA)
    if not path.is_dir():
        pytest.skip(SHARED_SKIP.format(path=path))
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """One line naming why the reference-data tests skipped (shown without ``-rs`` too)."""
    prefix = SHARED_SKIP.split("{", 1)[0]
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if prefix in str(r.longrepr)]
    if skipped:
        reason = str(skipped[0].longrepr[2]).removeprefix("Skipped: ")
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {reason}")


@pytest.fixture(scope="session")
def toy_shapes_data(tmp_path_factory) -> tuple[Path, Path]:
    """ToyShapes (48 classes, default sizes) generated once per session, and a feature cache beside it:
    ``(data root, cache dir)``. The tests that train on the whole benchmark share both (the cache is keyed by each
    image's path, size and mtime, so the test split is encoded once); they may add other toy folders next to
    ``toy_shapes`` but change nothing in it. The demo's test generates its own (a user's first run)."""
    from stori_pl.toy.data import write_toy_shapes

    base = tmp_path_factory.mktemp("toy_shapes_shared")
    write_toy_shapes(base / "data")
    return base / "data", base / "cache"


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


def patch_load_clip(monkeypatch, fake) -> None:
    """Replace ``stori_pl.text.clip.load_clip`` by ``fake`` everywhere: in text.clip and in every loaded stori_pl
    module that imported it by name (modules imported later pick the fake up from text.clip)."""
    import sys

    import stori_pl.text.clip

    real = stori_pl.text.clip.load_clip
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("stori_pl") and getattr(module, "load_clip", None) is real:
            monkeypatch.setattr(module, "load_clip", fake)
