"""Baselines against direct re-implementations of their official code (random-init CLIPs of real architectures).

Each reference below is written from the official file named in its docstring, independently of stori-pl's
implementation (plain open_clip modules, all 77 positions, the official order of operations).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from stori_pl.data.containers import PromptSet
from stori_pl.models.schedules import dassl_lr, dassl_scheduler

CLASSES = ["dog", "hot_dog", "golden retriever", "cat"]
PROMPTS = PromptSet(
    CLASSES,
    [[f"a photo of a {c.replace('_', ' ')}."] for c in CLASSES],
    [[f"a {c} is an animal or a food.", f"look at this {c}"] for c in CLASSES],
)


@pytest.fixture(scope="module", params=["stori-tiny", "ViT-B-32"])
def arch(request):
    return request.param


def official_coop_text_features(model, ctx: torch.Tensor, classnames: list[str], tokenizer) -> torch.Tensor:
    """``KaiyangZhou/CoOp`` trainers/coop.py: PromptLearner (class token at the end) + TextEncoder, 77 positions."""
    n_ctx = ctx.shape[0]
    prompts = [" ".join(["X"] * n_ctx) + " " + name.replace("_", " ") + "." for name in classnames]
    tokenized = tokenizer(prompts)  # [C, 77]
    with torch.no_grad():
        embedding = model.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx :, :]
    x = torch.cat([prefix, ctx.unsqueeze(0).expand(len(classnames), -1, -1), suffix], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)  # open_clip blocks are batch-first
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def test_coop_logits_match_official(arch):
    from stori_pl import load_clip
    from stori_pl.models.coop import CoOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = CoOp(arch, None, prompts=PROMPTS.to_dict())
        clip, _, tokenizer = load_clip(arch, None)
    with torch.no_grad():
        model.ctx.normal_(std=0.3)  # away from the init, so the context matters
    feats = torch.randn(6, model.clip.text_projection.shape[1])
    text = official_coop_text_features(clip, model.ctx.detach(), CLASSES, tokenizer)
    expected = clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(model(feats), expected, atol=1e-4, rtol=1e-4)
    assert model.ctx.shape == (16, clip.token_embedding.weight.shape[1])


def test_coop_gradient_matches_official():
    from stori_pl import load_clip
    from stori_pl.models.coop import CoOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        model = CoOp("stori-tiny", None, prompts=PROMPTS.to_dict())
        clip, _, tokenizer = load_clip("stori-tiny", None)
    feats, labels = torch.randn(5, 32), torch.tensor([0, 1, 2, 3, 1])
    F.cross_entropy(model(feats), labels).backward()
    ctx = model.ctx.detach().clone().requires_grad_(True)
    text = F.normalize(official_coop_text_features(clip, ctx, CLASSES, tokenizer), dim=-1)
    F.cross_entropy(clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.T, labels).backward()
    torch.testing.assert_close(model.ctx.grad, ctx.grad, atol=1e-5, rtol=1e-4)


def test_coop_ctx_init_from_phrase():
    from stori_pl import load_clip
    from stori_pl.models.coop import CoOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoOp("stori-tiny", None, ctx_init="a photo of a", prompts=PROMPTS.to_dict())
        clip, _, tokenizer = load_clip("stori-tiny", None)
    init = clip.token_embedding(tokenizer(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(model.ctx.detach(), init)
    # with the phrase as context the prompt is exactly the text "a photo of a <class>."
    plain = F.normalize(clip.encode_text(tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])), dim=-1)
    torch.testing.assert_close(model.class_embeddings().detach(), plain, atol=1e-5, rtol=1e-4)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _DasslConstantWarmup(ref_opt, torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, float(max_epoch)), 1, 1e-5)
        ours = dassl_scheduler(ours_opt, max_epoch, 1, 1e-5)
        for epoch in range(max_epoch):
            got, want = ours_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"]
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (epoch, got, want)
            assert math.isclose(got, dassl_lr(epoch, lr, max_epoch), rel_tol=1e-9)
            ref_opt.step(), ours_opt.step()
            ref.step(), ours.step()
    assert dassl_lr(0, lr, max_epoch) == 1e-5 and dassl_lr(1, lr, max_epoch) == lr


def official_taskres_logits(clip, tokenizer, texts_per_class, residual, alpha, feats):
    """``geekyutao/TaskRes`` trainers/taskres.py: ``_get_base_text_features`` (raw encoder outputs averaged per
    class, no normalization), ``TaskResLearner.forward`` (t + alpha * r), ``CustomCLIP.forward``."""
    with torch.no_grad():
        base = torch.stack([clip.encode_text(tokenizer(texts)).mean(0) for texts in texts_per_class])  # [C, D]
    text = base + alpha * residual
    img = feats / feats.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return clip.logit_scale.exp() * img @ text.t()


@pytest.mark.parametrize("use_cupl", [False, True])
def test_taskres_logits_match_official(arch, use_cupl):
    from stori_pl import load_clip
    from stori_pl.models import TaskRes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TaskRes(arch, None, alpha=0.5, use_cupl_prompts=use_cupl, prompts=PROMPTS.to_dict())
        clip, _, tokenizer = load_clip(arch, None)
    with torch.no_grad():
        model.residual.normal_(std=0.5)
    feats = torch.randn(6, model.residual.shape[1])
    texts = [PROMPTS.base[c] + (PROMPTS.cupl[c] if use_cupl else []) for c in range(len(CLASSES))]
    expected = official_taskres_logits(clip, tokenizer, texts, model.residual.detach(), 0.5, feats)
    torch.testing.assert_close(model(feats), expected, atol=1e-4, rtol=1e-4)
    # the unnormalized mean is what makes TaskRes differ from normalizing each prompt first
    assert model.method_name == ("TaskRes (Base+CuPL)" if use_cupl else "TaskRes (Base)")


# ---------------------------------------------------------------------------------------------- Tip-Adapter
def official_search_hp(scale, step, cache_keys, cache_values, features, labels, clip_weights):
    """``gaopengcuhk/Tip-Adapter`` utils.py ``search_hp`` (keys ``[D, K]``, weights ``[D, C]``, as there)."""
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


def _toy_cache(seed=0, n_cls=5, shots=4, dim=16, views=3, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_cls, dim, generator=g), dim=-1)
    labels = torch.arange(n_cls).repeat_interleave(shots)
    train = F.normalize(centres[labels, None] + noise * torch.randn(len(labels), views, dim, generator=g), dim=-1)
    val_labels = torch.arange(n_cls).repeat(3)
    val = F.normalize(centres[val_labels] + noise * torch.randn(len(val_labels), dim, generator=g), dim=-1)
    weights = F.normalize(centres + 0.8 * torch.randn(n_cls, dim, generator=g), dim=-1)  # a weak zero-shot head
    return train, labels, val, val_labels, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_tip_adapter_search_and_logits_match_official(seed):
    from stori_pl.models.tip_adapter import search_alpha_beta, tip_logits

    train, labels, val, val_labels, weights = _toy_cache(seed)
    keys = F.normalize(train.mean(1), dim=-1)  # build_cache_model: mean over augment epochs, then normalize
    values = F.one_hot(labels).float()
    for scale, step in [((13, 13), (200, 20)), ((7, 3), (50, 10))][: 2 if seed == 0 else 1]:
        ours = search_alpha_beta(val, val_labels, weights, keys, values, scale, step)
        theirs = official_search_hp(scale, step, keys.T, values, val, val_labels, weights.T)
        assert ours == pytest.approx(theirs, abs=1e-12)
    beta, alpha = 2.5, 1.17
    expected = 100.0 * val @ weights.T + alpha * ((-1) * (beta - beta * (val @ keys.T))).exp() @ values
    torch.testing.assert_close(tip_logits(val, weights, keys, values, alpha, beta), expected)


# ---------------------------------------------------------------------------------------------- linear probe
def test_logistic_fit_is_the_sklearn_optimum():
    """Stationarity of sklearn's objective ``C·Σ CE + ½‖W‖²`` (bias free): ``C·Xᵀ(P − Y) + W = 0``, ``Σ(P − Y) = 0``."""
    from stori_pl.models.linear_probe import fit_logistic

    train, labels, *_ = _toy_cache(3)
    x = train[:, 0]
    for c in (1e-2, 1.0, 100.0):
        w, b = fit_logistic(x, labels, 5, c)
        p = (x.double() @ w.T + b).softmax(-1)
        resid = p - F.one_hot(labels, 5).double()  # [N, C]
        grad_w = c * resid.T @ x.double() + w
        assert grad_w.abs().max() < 1e-6 * max(1.0, c) and resid.sum(0).abs().max() < 1e-6
    assert fit_logistic(x, labels, 5, 1e-6)[0].abs().max() < 1e-4  # strong regularization: W -> 0


def official_c_search(fit_acc, steps=8):
    """``KaiyangZhou/CoOp`` lpclip/linear_probe.py: initial list, then the binary search in log10 space."""
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
    """The search logic on a val-accuracy curve with a plateau-free peak at ``peak`` (and ties far from it)."""
    from stori_pl.models.linear_probe import search_c

    calls = []

    def accuracy(c):
        calls.append(c)
        return round(max(0.0, 1 - abs(math.log10(c) - math.log10(peak)) / 6), 3)

    ours = search_c(accuracy)
    n_ours, calls[:] = len(calls), []
    theirs = official_c_search(accuracy)
    assert ours == pytest.approx(theirs, rel=1e-12) and n_ours == len(calls) == 7 + 2 * 8
    assert abs(math.log10(ours) - math.log10(peak)) < 0.5  # the bisection homes in on the peak


def test_linear_probe_fit_on_features():
    """End to end on separable features: the probe reaches 100% val accuracy and its C comes from the search."""
    from stori_pl.models.linear_probe import fit_logistic, search_c, val_accuracy

    train, labels, val, val_labels, _ = _toy_cache(5, noise=0.25)
    x = train[:, 0]
    c = search_c(lambda c: val_accuracy(*fit_logistic(x, labels, 5, c, 100), val, val_labels), steps=2)
    assert val_accuracy(*fit_logistic(x, labels, 5, c, 100), val, val_labels) >= 0.9
