"""IntCoOp on toy world v2's state-dependent classes (ToyKinds, stori-toy CLIP, `toy` labels = each image's state,
wet / dry): the Lightning path end to end (losses logged, TensorBoard attribute table, small checkpoint, new
classes, `stori explain`), and the evidence of docs/intcoop.md at a small budget (`python tools/intcoop_toy.py`
has the full one)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from stori_pl.toy import data as toy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import intcoop_toy as study  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine the many small text-encoder ops run ~10x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, one_thread):
    """IntCoOp fitted for 3 epochs on the base half (4 nouns) of a small ToyKinds folder with `toy` (state) labels."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from stori_pl.models import IntCoOp

    base = tmp_path_factory.mktemp("intcoop_toy")
    mp = pytest.MonkeyPatch()
    mp.setenv("STORI_CACHE", str(base / "cache"))
    toy.write_toy_benchmark(base, toy.KINDS_SPEC, n_train=4, n_val=2, n_test=10)
    dm = toy.ToyKinds(root=str(base), shots=4, batch_size=8, attribute_labels="toy", subsample_classes="base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = IntCoOp("stori-toy", "builtin")
        trainer = L.Trainer(max_epochs=3, logger=TensorBoardLogger(str(base / "runs")), enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(base))
        trainer.fit(model, dm)
    ckpt = base / "intcoop.ckpt"
    trainer.save_checkpoint(ckpt)
    yield base, model, trainer, ckpt
    mp.undo()


def test_fit_logs_each_loss_and_the_attribute_table(fitted):
    base, model, trainer, _ = fitted
    metrics = trainer.callback_metrics
    for name in ("train/loss_ce", "train/loss_attr", "train/loss_reg", "val/loss_attr", "val/acc"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert model.attribute_words == ["dry", "wet"]  # from the datamodule (ToyKinds' toy labels: the state, sorted)
    events = b"".join(p.read_bytes() for p in (base / "runs").rglob("events.out.tfevents*"))
    assert b"val/attributes" in events and b"| predicted |" in events


def test_checkpoint_is_small_and_tests_on_new_classes(fitted):
    import lightning as L

    from stori_pl.models import IntCoOp

    base, model, _, ckpt = fitted
    assert ckpt.stat().st_size < 2_000_000  # trained parts (+ optimizer state) only, no CLIP weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = IntCoOp.load_from_checkpoint(ckpt, map_location="cpu")
        torch.testing.assert_close(loaded.ctx, model.ctx)
        assert loaded.attribute_words == ["dry", "wet"]
        new = toy.ToyKinds(root=str(base), shots=4, batch_size=8, subsample_classes="new")
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        result = trainer.test(loaded, new, verbose=False)[0]
    assert loaded.classnames == new.prompt_set().classnames  # rebuilt for the new names, trained parts kept
    torch.testing.assert_close(loaded.ctx, model.ctx)
    assert result["test/acc"] > 1 / 4 + 0.15  # chance is 1/4; the toy CLIP's noun names carry over (zero-shot: ~69 %)


def test_explain_prints_attribute_prompt_and_context_words(fitted, capsys):
    from stori_pl.cli import main

    base, _, _, ckpt = fitted
    image = next((base / "toy_kinds" / "images").rglob("test_000.png"))
    assert main(["explain", str(ckpt), "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert "Predicted attribute: " in out and ("wet" in out or "dry" in out)
    assert "Prompt as text: " in out and "ctx 4:" in out and "ctx(I) 4:" in out


def test_state_prompts_base_to_novel(one_thread):
    """docs/intcoop.md's toy-world evidence at a small budget: ToyKinds base-to-novel, the state as the attribute.

    Budget: ``study.run_seed(s, epochs=10, shots=8, n_test=50)`` (200 test images per half, ~25 s).
    Measured over seeds 1-5 at this budget (per seed):
    - state word in the slot, true - wrong (points): base 56.0, 58.0, 47.0, 55.0, 55.5; new 71.5, 75.0, 71.5,
      56.5, 62.0;
    - HM, IntCoOp - CoOp (random init): 11.4, 13.3, 19.0, 10.1, 8.7;
    - state accuracy of ``A(f(I))`` on the new classes (chance 50 %): 53.5, 53.5, 48.0, 47.0, 48.5;
    - HM, IntCoOp oracle - shuffled labels: +4.8, -2.7, -0.9, +0.7, +3.0 (the paper's claim does not hold here,
      and is not asserted; docs/intcoop.md).
    Asserted (seed 1), each with its margin under the worst measured seed:
    (a) the state word reaches the prompt and decides: true - wrong >= 30 on both halves (17 under the smallest);
    (b) IntCoOp's HM >= CoOp's (random init) + 3, the issue's target (5.7 under the smallest measured gain);
    (c) the extractor does not transfer the state to new nouns: state accuracy on new <= 70 % (16.5 over the
        largest), the reason the attribute word does not help on new classes.
    Falsification: a slot the text tower ignored would give true == wrong and fail (a); CoOp from "a photo of a"
    fails (b) (HM gain -6.3 at this budget); an extractor that transferred the state would fail (c)."""
    out = study.run_seed(1, epochs=10, shots=8, n_test=50)
    for half in ("base", "new"):
        assert out[f"IntCoOp (true state in slot) {half}"] - out[f"IntCoOp (wrong state in slot) {half}"] >= 30, out
    assert out["IntCoOp HM"] >= out["CoOp HM"] + 3.0, out
    assert out["IntCoOp state new"] <= 70.0, out


def test_visual_prompts_train_on_images(fitted):
    import lightning as L

    from stori_pl.models import IntCoOp

    base = fitted[0]

    def run(return_images: bool):
        dm = toy.ToyKinds(root=str(base), shots=1, batch_size=6, attribute_labels="toy", subsample_classes="base",
                           return_images=return_images)
        model = IntCoOp("stori-toy", "builtin", visual_prompts=2, visual_prompt_depth=2)
        start = model_tokens = None
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.setup("fit")
            model.build(dm.prompt_set())
            start = model.visual_prompt.tokens.detach().clone()
            trainer.fit(model, dm)
            model_tokens = model.visual_prompt.tokens.detach()
        return start, model_tokens, dm

    with pytest.raises(ValueError, match="return_images: true"):
        run(False)
    start, trained, dm = run(True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 64, 64) and "attribute" in batch
    assert not torch.equal(start, trained)  # the visual prompt tokens learned
