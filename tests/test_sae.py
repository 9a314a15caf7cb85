"""TopKSAE (stori_pl/image/sae.py) against a direct re-implementation of the authors' TopKSAE
(maxdreyer/attributing-clip model_training/sae.py + the loss of model_training/base_pl.py), old weight_norm."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.image.sae import DeadLatentTracker, TopKSAE, explained_variance


class AuthorsTopKSAE(nn.Module):
    """Their formulas, copied (cls token path; hooks and config plumbing left out)."""

    def __init__(self, input_dim, hidden_dim, k):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
            self.k = k
            self.add_residual = True
            self.encoder = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(input_dim, hidden_dim)))
            self.decoder = torch.nn.utils.weight_norm(nn.Linear(hidden_dim, input_dim, bias=False), dim=1)
        self.decoder.weight_g.data.fill_(1.0)
        self.decoder.weight_g.requires_grad = False

    def top_k_masking(self, z):
        values, indices = torch.topk(z, self.k, dim=1)
        mask = torch.zeros_like(z).scatter(1, indices, 1.0)
        return z * mask

    def forward(self, x):
        z = self.encoder(x)
        z_bar = self.top_k_masking(z)
        x_recon = self.decoder(z_bar)
        rec = x_recon
        if self.add_residual:
            x_recon = x_recon + (x - x_recon).detach()
        return x_recon, z, z_bar, rec

    def loss(self, x):  # Vanilla.default_step with loss_fn "mse"
        rec = self(x)[3]
        return 100 * torch.nn.MSELoss()(F.normalize(rec, dim=-1), F.normalize(x, dim=-1))


@pytest.fixture
def pair():
    torch.manual_seed(0)
    theirs = AuthorsTopKSAE(32, 96, 6)
    ours = TopKSAE.from_authors_state_dict(theirs.state_dict(), k=6)
    return theirs, ours


def test_same_init_under_the_same_seed():
    torch.manual_seed(3)
    theirs = AuthorsTopKSAE(16, 40, 4)
    torch.manual_seed(3)
    ours = TopKSAE(16, 40, 4)
    enc, dec = ours.encoder.parametrizations.weight, ours.decoder.parametrizations.weight
    torch.testing.assert_close(enc.original0, theirs.encoder[0].weight_g)
    torch.testing.assert_close(enc.original1, theirs.encoder[0].weight_v)
    torch.testing.assert_close(dec.original, theirs.decoder.weight_v)
    x = torch.randn(3, 16)
    torch.testing.assert_close(ours(x)[2], theirs(x)[2])
    torch.testing.assert_close(ours.decoder.weight, theirs.decoder.weight)  # theirs recomputed by the forward
    torch.testing.assert_close(ours.encoder.bias, theirs.encoder[0].bias)


def test_forward_matches_authors(pair):
    theirs, ours = pair
    x = torch.randn(10, 32) * 3
    x_t, z_t, zbar_t, rec_t = theirs(x)
    x_o, z_pre, z = ours(x)
    torch.testing.assert_close(z_pre, z_t)
    torch.testing.assert_close(z, zbar_t)
    torch.testing.assert_close(ours.decode(z), rec_t)
    torch.testing.assert_close(x_o, x_t)
    torch.testing.assert_close(x_o, x)  # the residual trick returns the true activation
    assert ((z != 0).sum(-1) == 6).all()
    torch.testing.assert_close(ours.loss(x), theirs.loss(x))
    # batched tokens [B, T, d] go through the same path
    x3 = x.reshape(2, 5, 32)
    torch.testing.assert_close(ours(x3)[2].reshape(10, -1), zbar_t)


def test_decoder_directions_unit_rows_and_decode(pair):
    _, ours = pair
    d = ours.decoder_directions()
    assert d.shape == (96, 32)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(96))
    z = torch.zeros(1, 96)
    z[0, 7] = 2.5
    torch.testing.assert_close(ours.decode(z)[0], 2.5 * d[7])


def test_training_step_matches_authors(pair):
    """One AdamW step (their optimizer: lr 2e-4, eps 1e-7) moves both models to the same function."""
    theirs, ours = pair
    x = torch.randn(20, 32)
    opt_t = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=2e-4, eps=1e-7)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=2e-4, eps=1e-7)
    for _ in range(3):
        for model, opt in ((theirs, opt_t), (ours, opt_o)):
            opt.zero_grad()
            model.loss(x).backward()
            opt.step()
    y = torch.randn(7, 32)
    torch.testing.assert_close(ours(y)[1], theirs(y)[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.decoder.weight, theirs.decoder.weight, atol=1e-6, rtol=1e-5)
    assert ours.loss(x) < TopKSAE.from_authors_state_dict(AuthorsTopKSAE(32, 96, 6).state_dict(), 6).loss(x) * 10


def test_gradient_flows_through_latents_only(pair):
    _, ours = pair
    x = torch.randn(4, 32, requires_grad=True)
    x_out, _, z = ours(x)
    z.retain_grad()
    x_out.sum().backward()
    # d x_out / d z = decoder directions: the gradient reaching z is D @ 1
    torch.testing.assert_close(z.grad[0], ours.decoder_directions().sum(-1).detach())


def test_explained_variance_and_dead_tracker():
    x = torch.randn(50, 8)
    assert explained_variance(x, x) == 1.0
    assert abs(float(explained_variance(x, x.mean(0).expand_as(x)))) < 1e-6
    tracker = DeadLatentTracker(4, window=10)
    z = torch.zeros(6, 4)
    z[:, 0] = 1.0
    tracker.update(z)
    assert tracker.dead_fraction() == 0.0  # fewer than `window` tokens seen
    tracker.update(z)
    assert tracker.dead_fraction() == 0.75  # latents 1..3 never fired in 12 tokens
    z[0, 1] = 1.0
    tracker.update(z)
    assert tracker.dead_fraction() == 0.5


def test_bad_k_refused():
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(8, 4, k=5)


def test_top_activating_streams_like_a_full_sort():
    from stori_pl.interpret.concepts import top_activating

    torch.manual_seed(1)
    sae = TopKSAE(16, 40, 3)
    acts = torch.randn(300, 16)
    values, index = top_activating(sae, acts, top_n=7, batch_size=64)  # 5 chunks
    with torch.no_grad():
        z = sae.topk(sae.encode(acts))  # [300, 40]
    ref_v, ref_i = z.T.topk(7, dim=1)
    fires = ref_v > 0
    torch.testing.assert_close(values, torch.where(fires, ref_v, 0.0))
    assert torch.equal(index, torch.where(fires, ref_i, -1))
    # a latent that never fires gets -1 everywhere
    sae.encoder.bias.data[0] = -1e4
    assert (top_activating(sae, acts, 7)[1][0] == -1).all()


def test_clarity_and_concepts_with_fewer_images():
    from stori_pl.interpret.concepts import clarity_score, concept_vectors

    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    index = torch.tensor([[0, 3, -1], [0, 1, 2], [2, -1, -1], [-1, -1, -1]])
    clarity = clarity_score(emb, index)
    assert clarity[0] == pytest.approx(1.0)  # two images in the same direction
    # three images: mean pairwise cosine of (1,0), (0,1), (1,1)/sqrt2 = (0 + 0.7071 + 0.7071) / 3
    assert clarity[1] == pytest.approx((2 * 2 ** -0.5) / 3, abs=1e-6)
    assert clarity[2].isnan() and clarity[3].isnan()
    concepts = concept_vectors(emb, index)
    torch.testing.assert_close(concepts[0], torch.tensor([1.0, 0.0]))
    assert concepts[3].abs().sum() == 0
