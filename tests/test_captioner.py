"""The captioners (Hu et al.'s ss_attention and its updown baseline): shapes, the attention identities the paper
writes down, the losses, and clear errors for settings that cannot work."""

import pytest
import torch

from weakground.config import BackboneConfig
from weakground.errors import ConfigError
from weakground.methods import Captioner, create_method
from weakground.text.vocab import SPECIALS

WORDS = [*SPECIALS, "a", "red", "circle", "blue", "square", "left", "of"]
SMALL = {"hidden": 16, "embed_dim": 8, "attention_dim": 8, "dropout": 0.0, "max_len": 6, "regions": {"max_regions": 5}}


def make(name="ss_attention", **params):
    torch.manual_seed(0)
    return create_method(name, BackboneConfig(in_channels=3), WORDS, {**SMALL, **params})


def batch(b=3, k=5, c=320, with_targets=True):
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(b, k, dtype=torch.bool)
    valid[0, 3:] = False  # the first image has 3 regions, 2 rows of padding
    out = {"features": torch.rand(b, k, c, generator=g), "positions": torch.rand(b, k, 5, generator=g),
           "classes": torch.softmax(torch.rand(b, k, 1000, generator=g), -1), "valid": valid,
           "tokens": torch.tensor([[1, 4, 5, 6, 2, 0], [1, 4, 7, 8, 2, 0], [1, 4, 5, 6, 9, 2]])[:b]}
    if with_targets:
        sigma = torch.zeros(b, k)
        sigma[:, 1] = 1.0
        out["grounding_targets"] = sigma
    return out


def test_both_captioners_are_captioners_under_their_own_names():
    ss, updown = make(), make("updown")
    assert isinstance(ss, Captioner) and isinstance(updown, Captioner)
    assert ss.config.beta and ss.config.mu == 1.0 and not updown.config.beta and updown.config.mu == 0.0


def test_gamma_is_alpha_plus_lambda_beta_and_ignores_padding():
    model = make(lambda_beta=0.5).eval()
    regions = model.encode_regions(batch())
    assert torch.allclose(regions["beta"].sum(-1), torch.ones(3)) and (regions["beta"][0, 3:] == 0).all()
    _, gamma, _ = model.step(torch.ones(3, dtype=torch.long), model.initial_state(3, regions["mean"]), regions)
    # alpha sums to 1 and beta sums to 1: gamma, not renormalised, sums to 1 + lambda (the paper's formula)
    assert torch.allclose(gamma.sum(-1), torch.full((3,), 1.5)) and (gamma[0, 3:] == 0).all()
    updown = make("updown").eval()
    regions = updown.encode_regions(batch())
    assert "beta" not in regions
    _, gamma, _ = updown.step(torch.ones(3, dtype=torch.long), updown.initial_state(3, regions["mean"]), regions)
    assert torch.allclose(gamma.sum(-1), torch.ones(3))


def test_losses_are_finite_and_fall_on_a_tiny_batch():
    model = make()
    data = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        losses = model.loss(data)
        assert set(losses) == {"ce", "gnd", "total"} and torch.isfinite(losses["total"])
        first = first if first is not None else {k: float(v.detach()) for k, v in losses.items()}
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    assert float(losses["ce"]) < first["ce"] and float(losses["gnd"]) < first["gnd"]
    assert set(make(mu=0.0, grounding="none").loss(batch(with_targets=False))) == {"ce", "total"}


def test_l_gnd_is_minus_sigma_log_beta():
    model = make().eval()
    data = batch()
    beta = model.encode_regions(data)["beta"]
    expected = -(data["grounding_targets"] * beta.clamp(min=1e-12).log()).sum(1).mean()  # padding: beta 0, sigma 0
    assert torch.allclose(model.loss(data)["gnd"], expected)


def test_generation_gives_vocabulary_ids_and_one_gamma_row_per_word():
    model = make(beam=2).eval()
    out = model.generate(batch(with_targets=False))
    assert len(out) == 3
    for ids, gamma in out:
        assert len(ids) <= 6 and all(4 <= i < len(WORDS) or i == 3 for i in ids)
        assert gamma.shape == (len(ids), 5)


@pytest.mark.parametrize("params, message", [
    ({"mu": 1.0, "beta": False}, "needs beta: true"),
    ({"grounding": "grounder"}, "grounder_checkpoint"),
    ({"position_input": "q"}, "position_input must be one of p, v"),
    ({"beam": 0}, "beam >= 1"),
])
def test_settings_that_cannot_work_are_one_line_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        make(**params)


def test_a_vocabulary_is_required():
    with pytest.raises(ConfigError, match="needs a caption vocabulary"):
        create_method("ss_attention", BackboneConfig(in_channels=3), [], SMALL)
