"""Write configs/<method>/<dataset>_<k>shot.yaml: every method's published recipe on the six benchmarks
(and on the toy world, for `stori grid --datasets toy_shapes`).

Run from the repository root: ``python tools/make_configs.py``. The files are flat and complete on purpose
(no includes): each one is the whole experiment. ``tests/test_configs.py`` checks every recipe against the
tables written in the docstrings of :func:`model_section` (independently re-typed there).

Recipes (CLIP ViT-L/14 for every method, as in SToRI's Table 2; test the last checkpoint, as Dassl does):
- ``stori``: SToRI App. A.1 — Adam, weight decay 0, batch 256, epochs 100 (1/2/4 shots) / 200 (8/16); lr 1e-2
  ImageNet and SUN397, 0.1 Food101 and 8/16-shot DTD and Flowers102, 5e-2 otherwise; ImageNet and SUN397 keep
  the 10 CuPL prompts per class closest to the training images.
- ``taskres_base`` / ``taskres_cupl``: TaskRes as reproduced in SToRI's Table 2 — lr 2e-4 (2e-5 ImageNet),
  weight decay 5e-3, alpha 0.5, batch 256, epochs 100 / 200 (``geekyutao/TaskRes`` train_regular.sh);
  ImageNet's base is the 7 IMAGENET_TEMPLATES_SELECT + "a photo of a {}." ensemble; 10 cached views; the raw
  Dassl class name in the templates (``classname_format: dassl``); Dassl's ``drop_last``.
- ``coop``: ``KaiyangZhou/CoOp`` — 16 context vectors, SGD lr 0.002, batch 32, epochs 50 (1 shot) / 100 (2, 4) /
  200 (8, 16), ImageNet always 50; 10 cached views; ``ctx_init`` counts words; Dassl's ``drop_last``.
- ``tip_adapter`` / ``tip_adapter_f``: ``gaopengcuhk/Tip-Adapter`` configs — cache from 10 augmented views
  (crop scale 0.5–1; keys average the augmented views only), per-dataset search scale and initial alpha;
  alpha/beta searched on the whole val split (ImageNet: on test, as main_imagenet.py); ImageNet's classifier
  from its 7 templates; -F: AdamW lr 1e-3, 20 epochs, batch 256, no ``drop_last``, the last epoch kept.
- ``linear_probe``: CoOp's lpclip protocol — logistic regression (sklearn's tol 1e-4), C searched on val;
  eval-transform features.
- ``zero_shot`` (template prompts) and ``cupl`` (CuPL sentences + templates: SToRI's and TaskRes (Base+CuPL)'s
  starting point): nothing trained (`stori test`).
- ``intcoop``: IntCoOp (Ghosal et al. 2024; no official code offline, so the unknowns follow its closest
  precedent, CoCoOp's ``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``): 4 context vectors from
  "a photo of a", SGD lr 0.002, 10 epochs, batch 4 (B × C instance prompts per step; CoCoOp: batch 1), 10 cached
  views; attribute labels from BLIP-2 (the paper's labeller; ``--data.attribute_labels clip`` is the offline
  one), ``toy`` on the toy world (50 epochs, batch 32). Heads 4, key/value tokens 4, λ1 = λ2 = 1.
  ``intcoop/<dataset>_b2n_16shot.yaml``: the base-to-novel protocol (train on the base half of the classes;
  test with ``--data.subsample_classes new``); ``intcoop/toy_shapes.yaml``: the quick toy demo (20 epochs).
- On the toy world (``toy_shapes``, the shipped ``stori-toy`` CLIP) SToRI uses the demo's setting
  (``configs/demo.yaml``: start block 7, function words frozen, lr 0.4, 30 epochs); the other methods keep their
  recipes.

Augmented views: K = 10 cached random-resized-crop + flip views per training image (Dassl's crop scale 0.08–1
for CoOp / TaskRes) cost 10 encodes of the training split once; the official code draws a fresh crop each
step instead (CoOp: 200 epochs × 16 shots = 200 crops per image) — 1 + 10 views are the affordable stand-in,
the same count Tip-Adapter averages for its cache.
"""

from __future__ import annotations

from pathlib import Path

import yaml

DATASETS = {  # file prefix -> datamodule class path
    "imagenet": "stori_pl.data.ImageNet",
    "dtd": "stori_pl.data.DTD",
    "sun397": "stori_pl.data.SUN397",
    "flowers102": "stori_pl.data.Flowers102",
    "caltech101": "stori_pl.data.Caltech101",
    "food101": "stori_pl.data.Food101",
    "toy_shapes": "stori_pl.toy.data.ToyShapes",
}
SHOTS = (1, 2, 4, 8, 16)
METHODS = ("stori", "taskres_base", "taskres_cupl", "coop", "tip_adapter", "tip_adapter_f", "linear_probe",
           "zero_shot", "cupl")
INTCOOP = "intcoop"  # written by intcoop_configs (its own variants: base-to-novel, the toy demo)
TRAINED_NOTHING = ("zero_shot", "cupl")  # run with `stori test`
AUGMENT_VIEWS = 10
IMAGENET_BASE = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of a {}."]
TIP_IMAGENET = IMAGENET_BASE[:7]  # Tip-Adapter datasets/imagenet.py imagenet_templates (no "a photo of a {}.")
DASSL = ("coop", "taskres_base", "taskres_cupl")  # trainers on Dassl's data manager: drop_last
TIP = {  # dataset -> (search_scale (beta, alpha), init_alpha), from Tip-Adapter's configs/<dataset>.yaml
    "imagenet": ((7.0, 3.0), 1.17), "dtd": ((13.0, 13.0), 2.0), "sun397": ((12.0, 10.0), 1.17),
    "flowers102": ((50.0, 50.0), 10.0), "caltech101": ((12.0, 5.0), 3.0), "food101": ((10.0, 10.0), 1.17),
    "toy_shapes": ((13.0, 13.0), 2.0),
}


def clip_of(dataset: str) -> dict:
    """The CLIP of a benchmark config: ViT-L/14 (OpenAI), or the shipped toy CLIP on the toy world."""
    return {"clip_model": "stori-toy", "pretrained": "builtin"} if dataset == "toy_shapes" else \
        {"clip_model": "ViT-L-14", "pretrained": "openai"}


def epochs(method: str, dataset: str, shots: int) -> int:
    """Training epochs of one experiment (see the module docstring)."""
    if method == "coop":
        return 50 if dataset == "imagenet" or shots == 1 else (100 if shots <= 4 else 200)
    if method == INTCOOP:
        return 50 if dataset == "toy_shapes" else 10  # CoCoOp's 10 epochs
    if method == "stori" and dataset == "toy_shapes":
        return 30  # the demo's
    if method in ("stori", "taskres_base", "taskres_cupl"):
        return 100 if shots <= 4 else 200
    return {"tip_adapter_f": 20}.get(method, 1)


def model_section(method: str, dataset: str, shots: int) -> dict:
    """``model:`` of one experiment."""
    clip = clip_of(dataset)
    if method == "stori":
        lr = 1e-2 if dataset in ("imagenet", "sun397") else 0.1 if dataset == "food101" or (
            dataset in ("dtd", "flowers102") and shots >= 8) else 5e-2
        args = {"start_block": 7, "lr": lr, "weight_decay": 0.0, "use_base_prompts": True, "chunk_size": 1024}
        if dataset == "toy_shapes":  # the demo's readable setting (docs/explanations.md)
            args.update(lr=0.4, freeze_function_words=True)
        return {"class_path": "stori_pl.models.StoriClassifier", "init_args": {**clip, **args}}
    if method.startswith("taskres"):
        args = {"alpha": 0.5, "lr": 2e-5 if dataset == "imagenet" else 2e-4, "weight_decay": 5e-3,
                "use_base_prompts": True, "use_cupl_prompts": method == "taskres_cupl", "classname_format": "dassl"}
        return {"class_path": "stori_pl.models.TaskRes", "init_args": {**clip, **args}}
    if method == "coop":
        args = {"n_ctx": 16, "ctx_init": None, "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4,
                "ctx_init_count": "words"}
        return {"class_path": "stori_pl.models.CoOp", "init_args": {**clip, **args}}
    if method == INTCOOP:
        args = {"n_ctx": 4, "ctx_init": "a photo of a", "heads": 4, "kv_tokens": 4, "lambda_attr": 1.0,
                "lambda_reg": 1.0, "class_chunk": 64, "visual_prompts": 0, "lr": 0.002, "momentum": 0.9,
                "weight_decay": 5e-4}
        return {"class_path": "stori_pl.models.IntCoOp", "init_args": {**clip, **args}}
    if method.startswith("tip_adapter"):
        scale, alpha = TIP[dataset]
        args = {"fine_tune": method == "tip_adapter_f", "init_alpha": alpha, "init_beta": 1.0,
                "search_scale": list(scale), "search_step": [200, 20], "lr": 1e-3, "eps": 1e-4,
                "search_split": "test" if dataset == "imagenet" else "val", "cache_views": "augmented",
                "select_epoch_on_test": False}
        return {"class_path": "stori_pl.models.TipAdapter", "init_args": {**clip, **args}}
    if method == "linear_probe":
        return {"class_path": "stori_pl.models.LinearProbe",
                "init_args": {**clip, "search_steps": 8, "max_iter": 1000, "tol": 1e-4}}
    return {"class_path": "stori_pl.models.ZeroShotCLIP",  # zero_shot: templates; cupl: CuPL + templates
            "init_args": {**clip, "use_base_prompts": True, "use_cupl_prompts": method == "cupl"}}


def data_section(method: str, dataset: str, shots: int) -> dict:
    """``data:`` of one experiment."""
    args = {"root": "data", "shots": shots, "seed": 1, "fewshot_file": None, "cupl": None,
            "prompts_per_class": 10 if dataset in ("imagenet", "sun397") and method in ("stori", "taskres_cupl") else None,
            "classes": None, "cache_dir": None,
            "batch_size": {"coop": 32, INTCOOP: 32 if dataset == "toy_shapes" else 4}.get(method, 256), "num_workers": 0 if dataset == "toy_shapes" else 4,
            "download": False, "skip_bad_images": False,
            "augment_views": AUGMENT_VIEWS if method in ("taskres_base", "taskres_cupl", "coop", "tip_adapter",
                                                         "tip_adapter_f", INTCOOP) else 0,
            "augment_scale": [0.5, 1.0] if method.startswith("tip_adapter") else [0.08, 1.0],
            "drop_last": method in DASSL}
    if dataset == "imagenet" and method.startswith("taskres"):
        args["templates"] = IMAGENET_BASE
    if dataset == "imagenet" and method.startswith("tip_adapter"):
        args["templates"] = TIP_IMAGENET
    if method == INTCOOP:
        args.update(subsample_classes="all", attribute_labels="toy" if dataset == "toy_shapes" else "blip2",
                    return_images=False)  # true with model visual_prompts > 0
    return {"class_path": DATASETS[dataset], "init_args": args}


def config(method: str, dataset: str, shots: int) -> dict:
    """One flat, complete experiment."""
    name = f"{method}/{dataset}_{shots}shot"
    toy_stori = method == "stori" and dataset == "toy_shapes"  # as the demo: plots every 20 epochs, val every 5
    callbacks = [{"class_path": "stori_pl.lightning.callbacks.WeightPlotCallback",
                  "init_args": {"every_n_epochs": 20 if toy_stori else 1}}] if method == "stori" else []
    return {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "auto", "devices": 1, "precision": "32-true", "max_epochs": epochs(method, dataset, shots),
            "check_val_every_n_epoch": 5 if toy_stori else 1, "log_every_n_steps": 1,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": name}},
            "callbacks": callbacks,
        },
        "model": model_section(method, dataset, shots),
        "data": data_section(method, dataset, shots),
        "checkpoint": {"monitor": "val/acc", "mode": "max", "save_top_k": 1},
        "test_ckpt": "last",
        "test_after_fit": True,
    }


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of numbers (``search_scale: [13.0, 13.0]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(isinstance(x, (int, float)) for x in v)))


def header(method: str, dataset: str, shots: int) -> str:
    verb = "test" if method in TRAINED_NOTHING else "fit"
    root = "" if dataset == "toy_shapes" else " --data.root /path/to/data"
    return (f"# {method}, {dataset}, {shots}-shot: the published recipe (see tools/make_configs.py's docstring).\n"
            f"#   stori {verb} --config {method}/{dataset}_{shots}shot.yaml{root}    (data layout: docs/datasets.md)\n"
            "# Generated by tools/make_configs.py; flat and complete on purpose.\n")


def intcoop_configs() -> dict[str, tuple[str, dict]]:
    """``{file stem: (header, config)}`` of IntCoOp: every dataset × shots, the base-to-novel 16-shot variants
    (``<dataset>_b2n_16shot``: ``subsample_classes: base``) and ``toy_shapes`` (the quick demo)."""
    out = {}
    for dataset in DATASETS:
        for shots in SHOTS:
            out[f"{dataset}_{shots}shot"] = (header(INTCOOP, dataset, shots), config(INTCOOP, dataset, shots))
        cfg = config(INTCOOP, dataset, 16)
        cfg["data"]["init_args"]["subsample_classes"] = "base"
        stem = f"{dataset}_b2n_16shot"
        cfg["trainer"]["logger"]["init_args"]["name"] = f"{INTCOOP}/{stem}"
        root = "" if dataset == "toy_shapes" else " --data.root /path/to/data"
        out[stem] = (f"# intcoop, {dataset}, base-to-novel, 16-shot: train on the base half of the classes.\n"
                     f"#   stori fit --config intcoop/{stem}.yaml{root}\n"
                     f"#   (the test after fit covers the base classes, then the new ones; or later: stori test --config intcoop/{stem}.yaml{root} --data.subsample_classes new --data.attribute_labels null "
                     "--ckpt_path <its last.ckpt>)\n# Generated by tools/make_configs.py; flat and complete on purpose.\n",
                     cfg)
    demo = config(INTCOOP, "toy_shapes", 16)
    demo["trainer"]["max_epochs"] = 20
    demo["trainer"]["logger"]["init_args"]["name"] = f"{INTCOOP}/toy_shapes"
    out["toy_shapes"] = ("# intcoop on the toy world, the quick demo (20 epochs; TensorBoard: val/attributes).\n"
                         "#   stori fit --config intcoop/toy_shapes.yaml\n"
                         "# Generated by tools/make_configs.py; flat and complete on purpose.\n", demo)
    return out


def main(out: str | Path | None = None) -> None:
    """Write every generated config under ``out`` (default: the repository's ``configs/``)."""
    out = Path(out) if out is not None else Path(__file__).resolve().parents[1] / "configs"
    n = 0
    (out / INTCOOP).mkdir(parents=True, exist_ok=True)
    for stem, (head, cfg) in intcoop_configs().items():
        (out / INTCOOP / f"{stem}.yaml").write_text(head + yaml.dump(cfg, Dumper=_Dumper, sort_keys=False,
                                                                     default_flow_style=False))
        n += 1
    for method in METHODS:
        (out / method).mkdir(parents=True, exist_ok=True)
        for dataset in DATASETS:
            for shots in SHOTS:
                text = header(method, dataset, shots) + yaml.dump(config(method, dataset, shots), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
                (out / method / f"{dataset}_{shots}shot.yaml").write_text(text)
                n += 1
    print(f"wrote {n} configs to {out}/<method>/")


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else None)
