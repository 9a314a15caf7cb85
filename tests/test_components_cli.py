"""`stori components`, `stori components-eval` and `stori explain --sae` on the toy CLIP (end to end, small)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from component_world import toy_components

from stori_pl.cli import main as stori_main
from stori_pl.toy.data import TOY_CLASSES, classname, write_toy_shapes

CLASSES = [classname(*c) for c in TOY_CLASSES]
PROMPTS = {"classnames": CLASSES, "base": [[f"a photo of a {c}."] for c in CLASSES],
           "cupl": [[f"a {c} on a plain background."] for c in CLASSES]}


def save_checkpoint(module, path) -> None:
    """What Lightning's checkpoint holds for a module that trained nothing (the "stori" entry included)."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)


def sae_checkpoint(path, block: int = -1, clip_model: str = "stori-toy"):
    from stori_pl.models.sae import SparseAutoencoder

    world = toy_components()
    module = SparseAutoencoder(clip_model=clip_model, pretrained="builtin" if clip_model == "stori-toy" else None,
                               block=block, n_latents=world.sae.n_latents, k=world.sae.k)
    if clip_model == "stori-toy":
        module.sae.load_state_dict(world.sae.state_dict())
    save_checkpoint(module, path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A zero-shot and a SToRI toy checkpoint, an SAE checkpoint, ToyShapes (4 test images a class), concept images."""
    from stori_pl.models import StoriClassifier, ZeroShotCLIP
    from stori_pl.toy.images import write_toy_images

    root = tmp_path_factory.mktemp("components")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(root / "cache"))
        mp.chdir(root)
        write_toy_shapes(root / "data", n_train=1, n_val=1, n_test=4)
        write_toy_images(root / "concepts", n=160, seed=0)
        zero = ZeroShotCLIP(clip_model="stori-toy", pretrained="builtin", use_cupl_prompts=False, prompts=PROMPTS)
        save_checkpoint(zero, root / "zero_shot.ckpt")
        stori = StoriClassifier(clip_model="stori-toy", pretrained="builtin", start_block=5, prompts=PROMPTS)
        save_checkpoint(stori, root / "stori.ckpt")
        sae_checkpoint(root / "sae.ckpt")
        yield root
    torch.set_num_threads(threads)


def image_of(root, name: str = "striped red circle"):
    return root / "data" / "toy_shapes" / "images" / name.replace(" ", "_") / "test_000.png"


def test_image_view_compare_html_and_kept_table(env, capsys):
    html = env / "components.html"
    argv = ["components", str(env / "zero_shot.ckpt"), "--sae", str(env / "sae.ckpt"), "--image", str(image_of(env)),
            "--top", "5", "--compare", "true", "--html", str(html), "--concept_images", str(env / "concepts"),
            "--labels", "toy"]
    assert stori_main(argv) == 0
    out = capsys.readouterr().out
    assert "top 5 components for" in out and "Logit Lens" in out and "Act×LogitLens" in out
    # the concept images are a toy folder with attributes.json: the labels are checked against them
    line = next(line for line in out.splitlines() if line.startswith("label correctness:"))
    assert "most selective for" in line and "over 160 images" in line
    table = [line for line in out.splitlines() if line.strip()[:2] in {f"{i} " for i in range(1, 6)}]
    assert len(table) == 5
    page = html.read_text(encoding="utf-8")
    assert page.count("<tr>") == 6 and "data:image/png;base64," in page  # header + 5 rows, image strips
    from stori_pl.interpret.concepts import ComponentTable
    from stori_pl.toy.images import attribute_vocabulary

    kept = ComponentTable.load(env / "sae.ckpt.components.safetensors")  # toy labels, embedded through prompts
    assert set(kept.labels) <= {*attribute_vocabulary(), ""} and len(set(kept.labels)) > 3
    assert kept.extra["label_prompts"]["black background"] == "a shape on a black background."
    # the kept table is reused; another class is explained on request
    assert stori_main(argv[:6] + ["--class_name", "dotted blue square", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "'dotted blue square'" in out and "described" not in out


def test_class_level_lists_and_flags(env, capsys):
    vocab = env / "expected.json"
    vocab.write_text(json.dumps({"striped red circle": ["striped", "red", "circle"]}), encoding="utf-8")
    assert stori_main(["components", str(env / "zero_shot.ckpt"), "--sae", str(env / "sae.ckpt"), "--split", "test",
                       "--root", str(env / "data"), "--class_name", "striped red circle", "--vocabulary", str(vocab),
                       "--top", "4", "--html", str(env / "reliance.html")]) == 0
    out = capsys.readouterr().out
    assert "striped red circle: top 4 components over 4 test images" in out
    assert "flagged as unexpected reliance" in out and "class word" in out
    assert "unexpected" in (env / "reliance.html").read_text(encoding="utf-8")


def test_components_eval_writes_curves_and_areas(env, capsys):
    from stori_pl.cli.components_eval import components_eval

    out_dir = env / "faithfulness"
    result = components_eval(str(env / "zero_shot.ckpt"), str(env / "sae.ckpt"), root=env / "data", steps=3,
                             max_images=2, output=out_dir)
    assert result["n_images"] == 2 * len(CLASSES)
    assert set(result["areas"]) == {"act_grad", "act_logit_lens", "logit_lens", "energy", "random"}
    assert all(len(c) == 4 for c in result["curves"].values())
    assert len({round(c[0], 6) for c in result["curves"].values()}) == 1  # step 0: the same (reconstruction's) score
    assert result["keep_error"] is False  # the authors' protocol (eval_faithfulness.py add_residual = False)
    assert (out_dir / "curves.png").stat().st_size > 0 and list(out_dir.glob("events.out.tfevents.*"))
    assert len((out_dir / "areas.csv").read_text(encoding="utf-8").splitlines()) == 6
    assert json.loads((out_dir / "areas.json").read_text(encoding="utf-8"))["steps"] == 3
    out = capsys.readouterr().out
    assert "Act×Grad" in out
    # a toy benchmark records its images' attributes and the SAE's table is kept (the image-view test made it)
    check = result["label_correctness"]
    assert 0 <= check["right"] <= check["labelled"] and check["label_correctness"] == pytest.approx(
        check["right"] / max(1, check["labelled"]))
    assert f"label correctness: {check['right']} of {check['labelled']} labelled components" in out


def test_explain_shows_words_and_components(env, capsys):
    html = env / "explain.html"
    assert stori_main(["explain", str(env / "stori.ckpt"), "--image", str(image_of(env)), "--sae",
                       str(env / "sae.ckpt"), "--html", str(html), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Word attributions" in out and "top 3 components for" in out
    page = html.read_text(encoding="utf-8")
    assert "<ol>" in page and page.count("<tr>") == 4  # word attributions, then the component table


def test_bad_inputs_are_one_line_errors(env, capsys, tmp_path):
    def error(*argv) -> str:
        assert stori_main(list(argv)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return err

    ckpt, sae = str(env / "zero_shot.ckpt"), str(env / "sae.ckpt")
    other = sae_checkpoint(tmp_path / "sae_tiny.ckpt", clip_model="stori-tiny")
    msg = error("components", ckpt, "--sae", str(other), "--image", str(image_of(env)))
    assert "'stori-tiny'" in msg and "'stori-toy'" in msg
    block2 = sae_checkpoint(tmp_path / "sae_block2.ckpt", block=2)  # its components differ from the last block's (6) table
    msg = error("components", ckpt, "--sae", str(block2), "--image", str(image_of(env)), "--table",
                str(env / "sae.ckpt.components.safetensors"))
    assert "'stori-toy' block 6" in msg and "'stori-toy' block 2" in msg
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert str(bad) in error("components", ckpt, "--sae", sae, "--image", str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    assert f"vocabulary file {empty} is empty" in error("components", ckpt, "--sae", sae, "--split", "test", "--root",
                                                        str(env / "data"), "--vocabulary", str(empty))
    assert "unknown class 'striped red circl'" in error("components", ckpt, "--sae", sae, "--image",
                                                        str(image_of(env)), "--class_name", "striped red circl")
    assert "--steps must be in 1..8" in error("components-eval", ckpt, "--sae", sae, "--steps", "9")
    assert "give either --image" in error("components", ckpt, "--sae", sae)


@pytest.mark.parametrize("method", ["CoOp", "IntCoOp"])
def test_explain_prompt_checkpoints_show_components_too(env, capsys, method):
    """`stori explain CKPT --image IMG --sae SAE` on CoOp / IntCoOp: the prompt's words, then the image's components;
    IntCoOp's components are attributed to the prompts conditioned on that image (what it classifies with)."""
    import stori_pl.models as models
    from stori_pl.cli.component_inputs import load_images

    extra = {"attribute_words": ["small", "large"]} if method == "IntCoOp" else {}
    model = getattr(models, method)(clip_model="stori-toy", pretrained="builtin", n_ctx=4, ctx_init="a photo of a",
                                    prompts=PROMPTS, **extra).eval()
    path = env / f"{method}.ckpt"
    save_checkpoint(model, path)
    assert stori_main(["explain", str(path), "--image", str(image_of(env)), "--sae", str(env / "sae.ckpt"),
                       "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Learned context vectors" in out and "top 3 components for" in out
    assert out.index("Learned context vectors") < out.index("top 3 components for")
    images = load_images(model, [image_of(env)])
    with torch.no_grad():
        emb = model.clip.encode_image(images).float()  # [1, D]
        targets = model.image_class_embeddings(emb)[0]  # [C, D]
        logits = model(emb)[0]  # [C]
    expected = model.logit_scale * torch.nn.functional.normalize(emb, dim=-1)[0] @ targets.T
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
