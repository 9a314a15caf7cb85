"""Image feature cache: encode once, reuse, validate, recompute when stale, skip or name bad images."""

from __future__ import annotations

import json
import os
import re
import stat
import warnings

import pytest
import torch
from fakedata import make_fake, make_image
from safetensors import safe_open
from safetensors.torch import save_file

import stori_pl.data.features as F


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / "imgs" / ("sub" if i % 2 else "") / f"im{i}.png"
        make_image(p, (40 * i, 100, 200 - 30 * i), seed=i)
        paths.append(p)
    return paths


def feats(paths, cache, **kw):
    return F.image_features(paths, "stori-tiny", None, cache_dir=cache, batch_size=2, progress=False, **kw)


def test_encode_once_then_reuse(images, tmp_path, tiny_clip, encode_counter):
    cache = tmp_path / "cache"
    a, kept = feats(images, cache)
    assert encode_counter.calls == 3 and encode_counter.images == 5  # 5 images, batches of 2
    assert a.shape == (5, 32) and a.dtype == torch.float32 and kept == list(range(5))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5))
    b, _ = feats(images, cache)
    assert encode_counter.calls == 3
    torch.testing.assert_close(a, b)
    files = list((cache / "features").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temp files
    # features match a direct encoding with the model's own preprocess
    model, preprocess, _ = tiny_clip
    from PIL import Image

    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-4)


def test_changed_image_or_order_is_a_new_key(images, tmp_path, tiny_clip, encode_counter):
    cache = tmp_path / "cache"
    feats(images, cache)
    calls = encode_counter.calls
    make_image(images[0], (0, 0, 0), seed=99, size=9)  # new content, size and mtime
    os.utime(images[0], ns=(1, 1))
    feats(images, cache)
    assert encode_counter.calls > calls
    calls = encode_counter.calls
    rev, _ = feats(images[::-1], cache)
    assert encode_counter.calls > calls
    fwd, _ = feats(images, cache)
    torch.testing.assert_close(rev.flip(0), fwd)


def test_invalid_cache_is_recomputed(images, tmp_path, tiny_clip, encode_counter):
    cache = tmp_path / "cache"
    good, _ = feats(images, cache)
    (path,) = (cache / "features").iterdir()
    key = path.stem
    # wrong count, wrong key, garbage bytes: each is detected, warned about and re-encoded
    bad_files = [
        lambda: save_file({"features": torch.zeros(4, 32), "kept": torch.arange(5)}, str(path),
                          metadata={"key": key, "format": F.FORMAT_VERSION, "count": "5"}),
        lambda: save_file({"features": good, "kept": torch.arange(5)}, str(path),
                          metadata={"key": "other", "format": F.FORMAT_VERSION, "count": "5"}),
        lambda: path.write_bytes(b"garbage"),
    ]
    for corrupt in bad_files:
        corrupt()
        calls = encode_counter.calls
        with pytest.warns(UserWarning, match="invalid.*re-encoding"):
            again, _ = feats(images, cache)
        assert encode_counter.calls > calls
        torch.testing.assert_close(again, good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats(images, cache)  # repaired


def test_bad_image_named_or_skipped(images, tmp_path, tiny_clip, encode_counter):
    cache = tmp_path / "cache"
    images[3].write_bytes(b"\x89PNG broken")
    with pytest.raises(F.BadImageError, match=r"im3\.png.*skip_bad_images"):
        feats(images, cache)
    assert not (cache / "features").exists() or not any((cache / "features").iterdir())
    with pytest.warns(UserWarning, match=r"1 image.*im3\.png.*skipped"):
        f, kept = feats(images, cache, skip_bad_images=True)
    assert kept == [0, 1, 2, 4] and f.shape == (4, 32)
    calls = encode_counter.calls
    assert feats(images, cache, skip_bad_images=True)[1] == kept and encode_counter.calls == calls
    with pytest.warns(UserWarning, match="skipped when it was written"), pytest.raises(F.BadImageError):
        feats(images, cache)  # a cache missing images does not satisfy skip_bad_images=False


def test_views_and_workers(images, tmp_path, tiny_clip):
    cache = tmp_path / "cache"
    f, _ = feats(images, cache, views=2)
    assert f.shape == (5, 3, 32)
    plain, _ = feats(images, cache)
    torch.testing.assert_close(f[:, 0], plain)  # view 0 is the plain preprocess
    assert not torch.allclose(f[:, 1], f[:, 2])
    f2, _ = F.image_features(images, "stori-tiny", None, cache_dir=tmp_path / "c2", views=2, num_workers=1,
                             progress=False)
    torch.testing.assert_close(f, f2)  # augmentations are reproducible, also in worker processes


def test_image_folder_dataset(images, tmp_path, tiny_clip):
    (images[0].parent / "notes.txt").write_text("not an image")
    ds = F.ImageFolderDataset(images[0].parent)
    assert len(ds) == 5 and all(p.suffix == ".png" for p in ds.paths)
    f, paths = ds.features("stori-tiny", None, cache_dir=tmp_path / "cache", progress=False)
    assert f.shape == (5, 32) and paths == ds.paths
    assert len(F.ImageFolderDataset(images[0].parent, recursive=False)) == 3
    with pytest.raises(FileNotFoundError, match="no images"):
        F.ImageFolderDataset(tmp_path / "cache" / "features")
    with pytest.raises(FileNotFoundError, match="not found"):
        F.ImageFolderDataset(tmp_path / "missing")


# ------------------------------------------------------------------ fault injection (cited in docs/reliability.md)
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_fault_cache_file_keeps_normal_permissions(images, tmp_path, tiny_clip, umask):
    # safetensors' save_file creates its file with mode 0600; the cache file must get what a plain open() gives
    old = os.umask(umask)
    try:
        feats(images, tmp_path / "cache")
    finally:
        os.umask(old)
    (path,) = (tmp_path / "cache" / "features").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_fault_wrong_values_in_well_formed_cache_are_detected(images, tmp_path, tiny_clip, encode_counter):
    cache = tmp_path / "cache"
    good, _ = feats(images, cache)
    (path,) = (cache / "features").iterdir()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
    # same metadata (key, count, checksum), same shapes and dtypes, finite values: only the checksum tells
    wrong = good.clone()
    wrong[2, 7] += 1e-3
    for tensors, problem in [({"features": wrong, "kept": torch.arange(5)}, "checksum mismatch"),
                             ({"features": good.flip(0).contiguous(), "kept": torch.arange(5)}, "checksum mismatch")]:
        save_file(tensors, str(path), metadata=meta)
        calls = encode_counter.calls
        with pytest.warns(UserWarning, match=rf"feature cache {re.escape(str(path))} .*{problem}.*re-encoding"):
            again, _ = feats(images, cache)
        assert encode_counter.calls > calls  # rebuilt, not used
        torch.testing.assert_close(again, good)
    # a file written without a checksum (stori-pl 0.1) is rebuilt too
    save_file({"features": good, "kept": torch.arange(5)}, str(path),
              metadata={k: v for k, v in meta.items() if k != "sha256"})
    with pytest.warns(UserWarning, match="no checksum"):
        feats(images, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(feats(images, cache)[0], good)  # the rebuilt file verifies


def test_fault_missing_image_named_or_skipped(images, tmp_path, tiny_clip):
    cache = tmp_path / "cache"
    images[3].unlink()
    with pytest.raises(F.BadImageError, match=r"cannot read 1 image.*im3\.png.*skip_bad_images"):
        feats(images, cache)
    images[1].write_bytes(b"\x89PNG broken")  # an unreadable one too: one warning names both
    with pytest.warns(UserWarning, match=r"cannot read 2 image\(s\).*im1\.png, .*im3\.png; skipped"):
        f, kept = feats(images, cache, skip_bad_images=True)
    assert kept == [0, 2, 4] and f.shape == (3, 32)
    make_image(images[3], (1, 2, 3), seed=3)  # the file comes back: a new key, encoded
    with pytest.warns(UserWarning, match=r"cannot read 1 image.*im1\.png; skipped"):
        f, kept = feats(images, cache, skip_bad_images=True)
    assert kept == [0, 2, 3, 4]


def test_fault_missing_image_skipped_by_datamodule(tmp_path, tiny_clip, monkeypatch):
    from stori_pl.data import DTD

    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    fake = make_fake("dtd", tmp_path / "data")
    split = json.loads((fake.dataset_dir / "split_zhou_DescribableTextures.json").read_text())
    gone = fake.dataset_dir / "images" / split["test"][0][0]
    gone.unlink()

    def dm(**kw):
        return DTD(root=str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(fake.cupl),
                   num_workers=0, batch_size=4, **kw)

    missing_error = rf"(?s)1 of {len(split['test'])} test images .*{gone.name}.*skip_bad_images"
    with pytest.raises(FileNotFoundError, match=missing_error):
        dm().setup("test")
    skipping = dm(skip_bad_images=True)
    with pytest.warns(UserWarning, match=rf"cannot read 1 image.*{gone.name}; skipped"):
        skipping.setup("test")
    assert len(skipping.test_dataloader().dataset) == len(split["test"]) - 1
    n = len(split["test"])
    for entry in split["test"]:  # every image gone: `root` is wrong, one error even with skip_bad_images
        (fake.dataset_dir / "images" / entry[0]).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=rf"(?s){n} of {n} test images .*missing.*Check `root`") as e:
        dm(skip_bad_images=True).setup("test")
    assert "skip_bad_images" not in str(e.value)  # already on: not suggested


def test_augment_scale_reaches_the_crop_and_the_cache_key(tiny_clip):
    """Dassl's crop scale (0.08-1) and Tip-Adapter's (0.5-1) give different cached views, so different keys."""
    from torchvision import transforms as T

    model, preprocess, _ = tiny_clip
    crops = [t for t in F.augment_transform(preprocess, (0.5, 1.0)).transforms if isinstance(t, T.RandomResizedCrop)]
    assert crops and crops[0].scale == (0.5, 1.0)
    key = lambda views, scale: F.feature_key(["a.png"], "stori-tiny", None, preprocess, views, model, scale)  # noqa: E731
    assert key(10, (0.08, 1.0)) != key(10, (0.5, 1.0))
    assert key(0, (0.08, 1.0)) == key(0, (0.5, 1.0))  # no views: the scale plays no part
