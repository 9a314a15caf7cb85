"""Baselines against re-implementations of their official code (random-init CLIPs of real architectures).

Every reference below is written from the official file and lines named in its docstring, with open_clip and
torch only: no stori-pl function is on a reference path. The reference CLIP is a separate open_clip model
(``open_clip.create_model``) loaded with the project model's weights; prompts are tokenized with
``open_clip.tokenize`` (the same BPE as the official ``clip.tokenize``); text features go through the official
``TextEncoder`` (token embeddings + positions, all 77 positions, ``ln_final``, the EOT row, projection).

Official sources (fetched mirrors): ``KaiyangZhou/CoOp`` (trainers/coop.py, lpclip/linear_probe.py),
``KaiyangZhou/Dassl.pytorch`` (dassl/data/data_manager.py, dassl/data/datasets/base_dataset.py,
dassl/optim/lr_scheduler.py), ``geekyutao/TaskRes`` (trainers/taskres.py), ``gaopengcuhk/Tip-Adapter``
(main.py, main_imagenet.py, utils.py, datasets/utils.py, datasets/imagenet.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from fakedata import make_fake

from stori_pl.data.containers import PromptSet
from stori_pl.models.schedules import dassl_lr, dassl_scheduler

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "hot_dog", "golden retriever", "cat"]  # raw (Dassl) names: "hot_dog" keeps its underscore
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "art of the {}."]  # several prompts per class
PROMPTS = PromptSet.from_dict({  # as a datamodule builds it: display names with spaces, raw names and templates
    "classnames": [c.replace("_", " ") for c in CLASSES],
    "base": [[t.format(c.replace("_", " ")) for t in TEMPLATES] for c in CLASSES],
    "cupl": [[f"a {c} is an animal or a food.", f"look at this {c}"] for c in CLASSES],
    "raw_classnames": list(CLASSES), "templates": list(TEMPLATES),
})


@pytest.fixture(scope="module", params=["stori-tiny", "ViT-B-32"])
def arch(request):
    return request.param


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------ the official pieces
def reference_clip(arch: str, project_clip) -> torch.nn.Module:
    """A separate open_clip model with the project model's weights (random init is not reproducible otherwise)."""
    open_clip.add_model_config(ROOT / "stori_pl" / "model_configs" / "stori-tiny.json")
    ref = open_clip.create_model(arch, pretrained=None)
    ref.load_state_dict(project_clip.state_dict())
    return ref.eval().requires_grad_(False)


def official_text_encoder(clip, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """``KaiyangZhou/CoOp`` trainers/coop.py l. 46–57 (``TextEncoder.forward``; TaskRes trainers/taskres.py
    l. 77–88 is the same): ``prompts [C, 77, W]`` token embeddings -> features ``[C, D]``."""
    x = prompts + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)  # open_clip blocks are batch-first (the official permutes)
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ clip.text_projection


def official_encode_texts(clip, texts: list[str]) -> torch.Tensor:
    tokens = open_clip.tokenize(texts)  # [P, 77]
    with torch.no_grad():
        return official_text_encoder(clip, clip.token_embedding(tokens), tokens)


def official_prompt_learner(clip, classnames: list[str], ctx_init: str | None, n_ctx: int = 16):
    """``KaiyangZhou/CoOp`` trainers/coop.py l. 72–110 (``PromptLearner.__init__``, generic context):
    ``(ctx_vectors [n_ctx, W], token_prefix, token_suffix, tokenized_prompts)``."""
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        n_ctx = len(ctx_init.split(" "))  # l. 75: the number of words
        prompt = open_clip.tokenize([ctx_init])
        with torch.no_grad():
            embedding = clip.token_embedding(prompt)
        ctx_vectors = embedding[0, 1 : 1 + n_ctx, :]
        prompt_prefix = ctx_init
    else:
        ctx_vectors = torch.empty(n_ctx, clip.ln_final.weight.shape[0]).normal_(std=0.02)
        prompt_prefix = " ".join(["X"] * n_ctx)
    names = [name.replace("_", " ") for name in classnames]  # l. 98
    tokenized = open_clip.tokenize([prompt_prefix + " " + name + "." for name in names])
    with torch.no_grad():
        embedding = clip.token_embedding(tokenized)
    return ctx_vectors, embedding[:, :1, :], embedding[:, 1 + n_ctx :, :], tokenized


def official_coop_text_features(clip, ctx: torch.Tensor, classnames: list[str], ctx_init: str | None = None):
    """``PromptLearner.forward`` (l. 118–134, class token at the end) + ``TextEncoder``: ``[C, D]``."""
    _, prefix, suffix, tokenized = official_prompt_learner(clip, classnames, ctx_init, ctx.shape[0])
    prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(len(classnames), -1, -1), suffix], dim=1)
    return official_text_encoder(clip, prompts, tokenized)


# ---------------------------------------------------------------------------------------------------- CoOp
def test_coop_logits_match_official(arch):
    from stori_pl.models.coop import CoOp

    with quiet():
        torch.manual_seed(0)
        model = CoOp(arch, None, prompts=PROMPTS.to_dict())
    clip = reference_clip(arch, model.clip)
    with torch.no_grad():
        model.ctx.normal_(std=0.3)  # away from the init, so the context matters
    feats = torch.randn(6, clip.text_projection.shape[1])
    text = official_coop_text_features(clip, model.ctx.detach(), CLASSES)
    expected = clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(model(feats), expected, atol=1e-4, rtol=1e-4)
    assert model.ctx.shape == (16, clip.token_embedding.weight.shape[1])


def test_coop_gradient_matches_official():
    from stori_pl.models.coop import CoOp

    with quiet():
        torch.manual_seed(1)
        model = CoOp("stori-tiny", None, prompts=PROMPTS.to_dict())
    clip = reference_clip("stori-tiny", model.clip)
    feats, labels = torch.randn(5, 32), torch.tensor([0, 1, 2, 3, 1])
    F.cross_entropy(model(feats), labels).backward()
    ctx = model.ctx.detach().clone().requires_grad_(True)
    text = F.normalize(official_coop_text_features(clip, ctx, CLASSES), dim=-1)
    F.cross_entropy(clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.T, labels).backward()
    torch.testing.assert_close(model.ctx.grad, ctx.grad, atol=1e-5, rtol=1e-4)


# 4 words, 6 BPE tokens: "zebrafishes" and "kaleidoscopic" are split by the BPE
CTX_INIT = "a zebrafishes kaleidoscopic photo"


def test_coop_ctx_init_counts_words_not_tokens():
    """trainers/coop.py l. 74–79: ``n_ctx = len(ctx_init.split(" "))``; the first ``n_ctx`` tokens become the
    context, the phrase's remaining tokens stay fixed in ``token_suffix`` (l. 110)."""
    from stori_pl.models.coop import CoOp

    n_tokens = int(open_clip.tokenize([CTX_INIT]).argmax(-1)) - 1
    assert n_tokens > len(CTX_INIT.split(" ")) == 4  # the phrase makes the two counts differ
    with quiet():
        model = CoOp("stori-tiny", None, ctx_init=CTX_INIT, prompts=PROMPTS.to_dict())
        tokens_model = CoOp("stori-tiny", None, ctx_init=CTX_INIT, ctx_init_count="tokens", prompts=PROMPTS.to_dict())
    clip = reference_clip("stori-tiny", model.clip)
    ctx, prefix, suffix, _ = official_prompt_learner(clip, CLASSES, CTX_INIT)
    assert ctx.shape[0] == 4
    torch.testing.assert_close(model.ctx.detach(), ctx)
    torch.testing.assert_close(model.token_suffix, suffix[:, : model.token_suffix.shape[1]])
    text = official_coop_text_features(clip, ctx, CLASSES, CTX_INIT)
    torch.testing.assert_close(model.class_embeddings().detach(), F.normalize(text, dim=-1), atol=1e-5, rtol=1e-4)
    assert tokens_model.ctx.shape[0] == n_tokens  # the stori-pl option: every token of the phrase is learned


# ------------------------------------------------------------------------------------------ Dassl schedule
class _DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """``dassl/optim/lr_scheduler.py``: ConstantWarmupScheduler wrapping CosineAnnealingLR (WARMUP_RECOUNT=True)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


@pytest.mark.parametrize(("max_epoch", "lr"), [(50, 0.002), (200, 2e-4), (3, 0.1)])
def test_dassl_schedule_matches_official(max_epoch, lr):
    def sgd():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)

    ref_opt, ours_opt = sgd(), sgd()
    with quiet():
        ref = _DasslConstantWarmup(ref_opt, torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, float(max_epoch)), 1, 1e-5)
        ours = dassl_scheduler(ours_opt, max_epoch, 1, 1e-5)
        for epoch in range(max_epoch):
            got, want = ours_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"]
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (epoch, got, want)
            assert math.isclose(got, dassl_lr(epoch, lr, max_epoch), rel_tol=1e-9)
            ref_opt.step(), ours_opt.step()
            ref.step(), ours.step()
    assert dassl_lr(0, lr, max_epoch) == 1e-5 and dassl_lr(1, lr, max_epoch) == lr


# ------------------------------------------------------------------------------------------ Dassl drop_last
def official_dassl_train_batches(n_images: int, batch_size: int) -> int:
    """``dassl/data/data_manager.py`` l. 38–45: the training loader drops the last incomplete batch when the
    data source has at least one batch (``drop_last=is_train and len(data_source) >= batch_size``)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n_images)), batch_size=batch_size,
                                         shuffle=True, drop_last=n_images >= batch_size)
    return len(loader)


@pytest.mark.parametrize(("method", "dataset", "shots", "n_classes"),
                         [("taskres_base", "dtd", 16, 47), ("coop", "dtd", 1, 47), ("coop", "food101", 16, 101),
                          ("taskres_cupl", "caltech101", 1, 100), ("tip_adapter_f", "dtd", 16, 47)])
def test_training_batches_per_epoch_follow_the_official_loader(method, dataset, shots, n_classes):
    """CoOp and TaskRes run on Dassl's data manager (drop_last); Tip-Adapter-F on its own loader
    (``datasets/utils.py`` l. 368–375: ``drop_last=False``). 16-shot DTD TaskRes: 752 images, batch 256 → 2."""
    from stori_pl.data.base import FewShotDataModule
    from stori_pl.data.containers import FeatureDataset

    cfg = yaml.safe_load((ROOT / "configs" / method / f"{dataset}_{shots}shot.yaml").read_text())
    args = cfg["data"]["init_args"]
    dm = FewShotDataModule("unused", batch_size=args["batch_size"], drop_last=args["drop_last"])
    n = n_classes * shots
    dm._data["train"] = FeatureDataset(torch.zeros(n, 4), torch.zeros(n, dtype=torch.long))
    if method.startswith("tip"):
        want = len(torch.utils.data.DataLoader(range(n), batch_size=256, shuffle=True, drop_last=False))
    else:
        want = official_dassl_train_batches(n, args["batch_size"])
    assert len(dm.train_dataloader()) == want
    if (method, shots) == ("taskres_base", 16):
        assert want == 2  # 752 // 256 (main without drop_last: 3)


# ---------------------------------------------------------------------------------------------------- TaskRes
def official_taskres_base(clip, raw_classnames: list[str], templates: list[str]) -> torch.Tensor:
    """``geekyutao/TaskRes`` trainers/taskres.py l. 118–142 (``_get_base_text_features``): for each raw Dassl class
    name ``text`` (``self.dm.dataset.classnames``, l. 232; no ``_`` replacement), the encoder outputs of
    ``template.format(text)`` averaged *without* normalization: ``[C, D]``."""
    return torch.stack([official_encode_texts(clip, [t.format(text) for t in templates]).mean(0)
                        for text in raw_classnames])


def official_taskres_logits(base, residual, alpha, feats, logit_scale):
    """``TaskResLearner.forward`` (l. 100–101: ``t + alpha · r``) and ``CustomCLIP.forward`` (l. 198–217)."""
    text = base + alpha * residual
    img = feats / feats.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * img @ text.t()


def official_clip_classifier(clip, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """``gaopengcuhk/Tip-Adapter`` utils.py l. 18–35 (``clip_classifier``): ``_`` → space, each prompt
    normalized, the mean normalized again: ``[C, D]`` (the official returns its transpose)."""
    out = []
    for classname in classnames:
        emb = official_encode_texts(clip, [t.format(classname.replace("_", " ")) for t in templates])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        out.append(mean / mean.norm())
    return torch.stack(out)


def test_taskres_base_formats_raw_dassl_names_and_averages_unnormalized(arch):
    from stori_pl.models import TaskRes

    with quiet():
        model = TaskRes(arch, None, alpha=0.5, prompts=PROMPTS.to_dict())
        spaces = TaskRes(arch, None, alpha=0.5, classname_format="spaces", prompts=PROMPTS.to_dict())
    clip = reference_clip(arch, model.clip)
    with torch.no_grad():
        model.residual.normal_(std=0.5)
    feats = torch.randn(6, model.residual.shape[1])
    base = official_taskres_base(clip, CLASSES, TEMPLATES)
    expected = official_taskres_logits(base, model.residual.detach(), 0.5, feats, clip.logit_scale)
    torch.testing.assert_close(model(feats), expected, atol=1e-4, rtol=1e-4)
    # "hot_dog" is formatted with its underscore; the option replaces it, as the datamodule's base prompts do
    spaced = official_taskres_base(clip, [c.replace("_", " ") for c in CLASSES], TEMPLATES)
    assert not torch.allclose(spaced[1], base[1], atol=1e-4)
    torch.testing.assert_close(spaces.base_weights, spaced, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.base_weights[[0, 2, 3]], base[[0, 2, 3]], atol=1e-4, rtol=1e-4)
    # several prompts per class: TaskRes's mean-then-normalize differs from CLIP's normalize-then-mean
    mean_then_norm = F.normalize(base, dim=-1)
    norm_then_mean = official_clip_classifier(clip, CLASSES, TEMPLATES)
    assert (mean_then_norm - norm_then_mean).abs().max() > 1e-4
    torch.testing.assert_close(F.normalize(model.base_weights, dim=-1), mean_then_norm, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_cupl", [False, True])
def test_taskres_logits_match_official(use_cupl):
    """Base+CuPL: ``t_c`` averages the raw-name templates and the CuPL sentences (SToRI's Table-2 row)."""
    from stori_pl.models import TaskRes

    with quiet():
        model = TaskRes("ViT-B-32", None, alpha=0.5, use_cupl_prompts=use_cupl, prompts=PROMPTS.to_dict())
    clip = reference_clip("ViT-B-32", model.clip)
    with torch.no_grad():
        model.residual.normal_(std=0.5)
    feats = torch.randn(6, model.residual.shape[1])
    texts = [[t.format(raw) for t in TEMPLATES] + (PROMPTS.cupl[c] if use_cupl else []) for c, raw in enumerate(CLASSES)]
    base = torch.stack([official_encode_texts(clip, t).mean(0) for t in texts])
    expected = official_taskres_logits(base, model.residual.detach(), 0.5, feats, clip.logit_scale)
    torch.testing.assert_close(model(feats), expected, atol=1e-4, rtol=1e-4)
    assert model.method_name == ("TaskRes (Base+CuPL)" if use_cupl else "TaskRes (Base)")


def test_taskres_on_a_datamodule_uses_the_split_files_names(tmp_path):
    """Food101's split file names ``apple_pie``: Dassl's ``get_lab2cname`` (base_dataset.py l. 107–120) keeps
    it, and TaskRes formats ``"a photo of apple_pie, a type of food."`` (taskres.py l. 39, l. 134)."""
    from stori_pl.data import Food101
    from stori_pl.models import TaskRes

    fake = make_fake("food101", tmp_path)
    split = json.loads((fake.dataset_dir / "split_zhou_Food101.json").read_text())
    mapping = {label: name for _, label, name in split["train"]}  # Dassl: label -> classname of the items
    raw = [mapping[k] for k in sorted(mapping)]
    assert "apple_pie" in raw
    with quiet():
        dm = Food101(str(fake.root), clip_model="stori-tiny", pretrained=None, shots=1, cupl=str(fake.cupl))
        model = TaskRes("stori-tiny", None, prompts=dm.prompt_set().to_dict())
    clip = reference_clip("stori-tiny", model.clip)
    base = official_taskres_base(clip, raw, ["a photo of {}, a type of food."])
    torch.testing.assert_close(model.base_weights, base, atol=1e-4, rtol=1e-4)
    assert dm.prompt_set().classnames[0] == "apple pie"  # the display name stays spaced


# ---------------------------------------------------------------------------------------------- Tip-Adapter
def official_search_hp(scale, step, cache_keys, cache_values, features, labels, clip_weights):
    """``gaopengcuhk/Tip-Adapter`` utils.py l. 99–129 ``search_hp`` (keys ``[D, K]``, weights ``[D, C]``)."""
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ cache_keys
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
            clip_logits = 100.0 * features @ clip_weights
            tip_logits = clip_logits + cache_logits * alpha
            acc = float((tip_logits.argmax(-1) == labels).float().sum()) / len(labels) * 100
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


def official_cache_keys(passes: torch.Tensor) -> torch.Tensor:
    """utils.py l. 38–61 (``build_cache_model``): raw ``encode_image`` outputs of ``augment_epoch`` augmented
    passes ``[A, K, D]`` averaged, then normalized (no plain view): keys ``[K, D]`` (the official ``[D, K]``)."""
    keys = passes.mean(dim=0)
    return keys / keys.norm(dim=-1, keepdim=True)


def _toy_cache(seed=0, n_cls=5, shots=4, dim=16, views=3, noise=0.6, n_val=3):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_cls, dim, generator=g), dim=-1)
    labels = torch.arange(n_cls).repeat_interleave(shots)
    train = F.normalize(centres[labels, None] + noise * torch.randn(len(labels), views, dim, generator=g), dim=-1)
    val_labels = torch.arange(n_cls).repeat(n_val)
    val = F.normalize(centres[val_labels] + noise * torch.randn(len(val_labels), dim, generator=g), dim=-1)
    weights = F.normalize(centres + 0.8 * torch.randn(n_cls, dim, generator=g), dim=-1)  # a weak zero-shot head
    return train, labels, val, val_labels, weights


def tip_model(**kwargs):
    from stori_pl.models.tip_adapter import TipAdapter

    ps = PromptSet([f"c{i}" for i in range(5)], [[f"a photo of a c{i}."] for i in range(5)], [[] for _ in range(5)])
    if kwargs.get("search_split") == "test" or kwargs.get("select_epoch_on_test"):  # the caller checks the warning
        return TipAdapter("stori-tiny", None, prompts=ps.to_dict(), **kwargs)
    with quiet():
        return TipAdapter("stori-tiny", None, prompts=ps.to_dict(), **kwargs)


@pytest.mark.parametrize("seed", [0, 1])
def test_tip_adapter_search_and_logits_match_official(seed):
    from stori_pl.models.tip_adapter import search_alpha_beta, tip_logits

    train, labels, val, val_labels, weights = _toy_cache(seed)
    keys = official_cache_keys(train.transpose(0, 1))
    values = F.one_hot(labels).float()
    for scale, step in [((13, 13), (200, 20)), ((7, 3), (50, 10))][: 2 if seed == 0 else 1]:
        ours = search_alpha_beta(val, val_labels, weights, keys, values, scale, step)
        theirs = official_search_hp(scale, step, keys.T, values, val, val_labels, weights.T)
        assert ours == pytest.approx(theirs, abs=1e-12)
    beta, alpha = 2.5, 1.17
    expected = 100.0 * val @ weights.T + alpha * ((-1) * (beta - beta * (val @ keys.T))).exp() @ values  # main.py l. 58-61
    torch.testing.assert_close(tip_logits(val, weights, keys, values, alpha, beta), expected)


def test_tip_cache_keys_average_the_augmented_passes_only():
    """The datamodule caches ``[K, 1 + V, D]`` (view 0 plain); the official keys average the V augmented passes
    of raw features, then normalize (no plain view, no per-view normalization)."""
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(10, 11, 32, generator=g) * torch.rand(10, 11, 1, generator=g) * 5  # raw: norms differ
    labels = torch.arange(5).repeat_interleave(2)
    model = tip_model()
    model.build_cache(raw, labels)
    torch.testing.assert_close(model.cache_keys.detach(), official_cache_keys(raw[:, 1:].transpose(0, 1)))
    torch.testing.assert_close(model.cache_values, F.one_hot(labels, 5).float())
    both = tip_model(cache_views="all")  # the stori-pl option: the plain view too
    both.build_cache(raw, labels)
    torch.testing.assert_close(both.cache_keys.detach(), F.normalize(raw.mean(1), dim=-1))
    assert not torch.allclose(both.cache_keys, model.cache_keys, atol=1e-4)


class _Trainer(SimpleNamespace):
    """What the search reads of a Trainer during the last validation of a fit."""

    def __init__(self, dm, epoch=0, max_epochs=1):
        super().__init__(datamodule=dm, sanity_checking=False, state=SimpleNamespace(fn="fit"), current_epoch=epoch,
                         max_epochs=max_epochs, is_global_zero=True, progress_bar_callback=None)


class _Parts:
    def __init__(self, parts):
        self.parts = parts

    def split_features(self, part):
        return self.parts[part]


def _search_parts(seed=0):
    """Few-shot val (1 image per class), the whole val split (12 per class), test: their searches differ."""
    train, labels, few, few_labels, weights = _toy_cache(seed, n_val=1, noise=0.9)
    g = torch.Generator().manual_seed(seed + 10)
    full = F.normalize(few.repeat(12, 1) + 0.9 * torch.randn(60, 16, generator=g), dim=-1)
    test = F.normalize(few.repeat(8, 1) + 0.9 * torch.randn(40, 16, generator=g), dim=-1)
    parts = {"val": (few, few_labels), "full_val": (full, few_labels.repeat(12)), "test": (test, few_labels.repeat(8))}
    return train, labels, weights, parts


@pytest.mark.parametrize("search_split", ["val", "fewshot_val", "test"])
def test_tip_search_split(search_split):
    """main.py l. 168–171, 193, 47: the datasets subsample only train, so alpha/beta are searched on the whole val
    split; main_imagenet.py l. 43: on test (warned); ``fewshot_val``: the strict few-shot protocol."""
    train, labels, weights, parts = _search_parts()
    keys = official_cache_keys(train.transpose(0, 1))
    values = F.one_hot(labels).float()
    ref = {name: official_search_hp((13, 13), (200, 20), keys.T, values, f, y, weights.T)
           for name, (f, y) in parts.items()}
    assert ref["full_val"] != ref["val"]  # the data make the split matter
    if search_split == "test":
        with pytest.warns(UserWarning, match="TEST split"):
            model = tip_model(search_scale=(13.0, 13.0), search_split="test")
    else:
        model = tip_model(search_scale=(13.0, 13.0), search_split=search_split)
    model.clip_weights = weights
    model.build_cache(train, labels)
    model.cache_keys.data.copy_(keys)
    model.trainer = _Trainer(_Parts(parts))
    model.on_validation_epoch_start()
    want = ref[{"val": "full_val", "fewshot_val": "val", "test": "test"}[search_split]]
    assert (float(model.beta), float(model.alpha)) == pytest.approx(want, abs=1e-6)


def test_tip_adapter_f_selects_the_best_test_epoch_only_when_asked():
    """main.py l. 111–126: after each epoch the test accuracy at the initial alpha/beta; the keys of the first
    best epoch are reloaded before the search. Only with ``select_epoch_on_test`` (warned); default: the last."""
    train, labels, weights, parts = _search_parts(1)
    weights = 0.01 * weights  # a weak zero-shot term, so that the cache (and the epoch) decides
    with pytest.warns(UserWarning, match="TEST split"):
        model = tip_model(fine_tune=True, select_epoch_on_test=True)
    last = tip_model(fine_tune=True)
    g = torch.Generator().manual_seed(7)
    epochs = [official_cache_keys(train.transpose(0, 1)) + 0.6 * torch.randn(20, 16, generator=g) for _ in range(4)]
    test_f, test_y = parts["test"]
    accs = []
    for m in (model, last):
        m.clip_weights = weights
        m.build_cache(train, labels)
    for epoch, keys in enumerate(epochs):
        affinity = test_f @ keys.T  # the official per-epoch evaluation, beta = 1, alpha = init_alpha
        logits = 100.0 * test_f @ weights.T + 1.17 * ((-1) * (1.0 - 1.0 * affinity)).exp() @ F.one_hot(labels).float()
        accs.append(float((logits.argmax(-1) == test_y).float().mean()))
        for m in (model, last):
            m.cache_keys.data.copy_(keys)
            m.trainer = _Trainer(_Parts(parts), epoch=epoch, max_epochs=len(epochs))
            if epoch < len(epochs) - 1:
                m.on_validation_epoch_start()
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # acc > best_acc: the first best
    assert len(set(accs)) > 1 and best != len(epochs) - 1  # the selection matters here
    for m in (model, last):
        m.on_validation_epoch_start()
    torch.testing.assert_close(model.cache_keys.detach(), epochs[best])
    torch.testing.assert_close(last.cache_keys.detach(), epochs[-1])


OFFICIAL_IMAGENET_TEMPLATES = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                               "a {} in a video game.", "art of the {}.", "a photo of the small {}."]  # datasets/imagenet.py l. 177-183


@pytest.mark.parametrize("method", ["tip_adapter", "tip_adapter_f"])
def test_tip_adapter_on_imagenet_uses_its_seven_templates(method, tmp_path):
    """main_imagenet.py l. 146: ``clip_classifier(imagenet.classnames, imagenet.template, ...)`` with the 7
    templates; the shipped ImageNet configs build exactly that classifier (and search on test)."""
    from stori_pl.data import ImageNet
    from stori_pl.models.tip_adapter import TipAdapter

    for shots in (1, 16):
        cfg = yaml.safe_load((ROOT / "configs" / method / f"imagenet_{shots}shot.yaml").read_text())
        assert cfg["data"]["init_args"]["templates"] == OFFICIAL_IMAGENET_TEMPLATES
        assert cfg["model"]["init_args"]["search_split"] == "test"
    fake = make_fake("imagenet", tmp_path)
    names = [line.split(" ", 1)[1].strip() for line in (fake.dataset_dir / "classnames.txt").read_text().splitlines()]
    with quiet():
        dm = ImageNet(str(fake.root), clip_model="stori-tiny", pretrained=None, shots=1,
                      templates=cfg["data"]["init_args"]["templates"], cupl=str(fake.cupl))
        model = TipAdapter("stori-tiny", None, prompts=dm.prompt_set().to_dict())
    clip = reference_clip("stori-tiny", model.clip)
    torch.testing.assert_close(model.clip_weights, official_clip_classifier(clip, names, OFFICIAL_IMAGENET_TEMPLATES),
                               atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- linear probe
def _probe_data(seed, n_cls=4, shots=4, dim=12, noise=0.7, n_val=10):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_cls, dim, generator=g)
    y = torch.arange(n_cls).repeat_interleave(shots)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    vy = torch.arange(n_cls).repeat(n_val)
    vx = centres[vy] + noise * torch.randn(len(vy), dim, generator=g)
    return x.double(), y, vx.double(), vy


def sklearn_fit(x, y, c, tol=1e-4):
    """``KaiyangZhou/CoOp`` lpclip/linear_probe.py l. 57: ``LogisticRegression(solver="lbfgs", max_iter=1000,
    penalty="l2", C=c)`` (``tol`` sklearn's default unless given)."""
    from sklearn.linear_model import LogisticRegression

    with quiet():
        return LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c, tol=tol).fit(x.numpy(), y.numpy())


@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_logistic_fit_is_the_sklearn_optimum(c):
    """Solved tightly, our fit is sklearn's (``coef_``, ``intercept_``: the same objective, bias not penalized)."""
    pytest.importorskip("sklearn")
    from stori_pl.models.linear_probe import fit_logistic

    x, y, *_ = _probe_data(3)
    w, b = fit_logistic(x, y, 4, c, max_iter=5000, tol=1e-10)
    ref = sklearn_fit(x, y, c, tol=1e-12)
    scale = max(1.0, float(abs(torch.from_numpy(ref.coef_)).max()))
    torch.testing.assert_close(w, torch.from_numpy(ref.coef_), atol=2e-4 * scale, rtol=1e-3)
    torch.testing.assert_close(b, torch.from_numpy(ref.intercept_), atol=2e-4 * scale, rtol=1e-3)


def official_c_search(fit_acc, steps=8):
    """lpclip/linear_probe.py l. 54–118: initial list, ``np.argmax`` of the val accuracies, then the binary
    search in log10 space."""
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [fit_acc(c) for c in search_list]
    c_peak = search_list[int(torch.tensor(acc_list).argmax())]
    c_left, c_right, c_final = 1e-1 * c_peak, 1e1 * c_peak, c_peak
    for _ in range(steps):
        acc_left, acc_right = fit_acc(c_left), fit_acc(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left, c_right = 0.5 * (math.log10(c_right) + math.log10(c_left)), math.log10(c_right)
        else:
            c_final = c_left
            c_right, c_left = 0.5 * (math.log10(c_right) + math.log10(c_left)), math.log10(c_left)
        c_left, c_right = 10**c_left, 10**c_right
    return c_final


@pytest.mark.parametrize("peak", [3e-3, 0.7, 40.0, 2e5])
def test_c_search_matches_official(peak):
    """The search logic on a val-accuracy curve with a plateau-free peak at ``peak``."""
    from stori_pl.models.linear_probe import search_c

    calls = []

    def accuracy(c):
        calls.append(c)
        return round(max(0.0, 1 - abs(math.log10(c) - math.log10(peak)) / 6), 3)

    ours = search_c(accuracy)
    n_ours, calls[:] = len(calls), []
    theirs = official_c_search(accuracy)
    assert ours == pytest.approx(theirs, rel=1e-12) and n_ours == len(calls) == 7 + 2 * 8
    assert abs(math.log10(ours) - math.log10(peak)) < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_search_with_real_sklearn_fits(seed):
    """The whole protocol: the official search over sklearn fits (default tol 1e-4) and ours over our fits at the
    default (sklearn's) tolerance pick the same C on few-shot data."""
    pytest.importorskip("sklearn")
    from stori_pl.models.linear_probe import fit_logistic, search_c, val_accuracy

    x, y, vx, vy = _probe_data(seed)

    def theirs(c):
        return float((sklearn_fit(x, y, c).predict(vx.numpy()) == vy.numpy()).mean())

    def ours(c):
        return val_accuracy(*fit_logistic(x, y, 4, c), vx, vy)

    assert search_c(ours) == pytest.approx(official_c_search(theirs), rel=1e-9)


def test_linear_probe_fit_on_features():
    """End to end on separable features: the probe reaches high val accuracy and its C comes from the search."""
    from stori_pl.models.linear_probe import fit_logistic, search_c, val_accuracy

    train, labels, val, val_labels, _ = _toy_cache(5, noise=0.25)
    x = train[:, 0]
    c = search_c(lambda c: val_accuracy(*fit_logistic(x, labels, 5, c, 100), val, val_labels), steps=2)
    assert val_accuracy(*fit_logistic(x, labels, 5, c, 100), val, val_labels) >= 0.9
