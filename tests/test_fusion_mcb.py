import pytest
import torch

from weakground.fusion.mcb import CompactBilinearPooling


def naive_sketch_of_outer_product(v, t, h1, s1, h2, s2, d):
    """Count sketch of the full outer product with hash (h1(i) + h2(j)) mod d and sign s1(i) s2(j)."""
    out = torch.zeros(d, dtype=torch.float64)
    for i in range(len(v)):
        for j in range(len(t)):
            out[(h1[i] + h2[j]) % d] += s1[i] * s2[j] * v[i] * t[j]
    return out


def test_mcb_equals_count_sketch_of_outer_product():
    torch.manual_seed(0)
    mcb = CompactBilinearPooling(7, 5, 16, post="none", seed=3)
    v, t = torch.randn(7), torch.randn(5)
    fast = mcb(v, t).double()
    ref = naive_sketch_of_outer_product(
        v.double(), t.double(), mcb.sketch_visual.hashes, mcb.sketch_visual.signs.double(),
        mcb.sketch_text.hashes, mcb.sketch_text.signs.double(), 16)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


def test_mcb_broadcasts_text_over_positions_and_normalises():
    mcb = CompactBilinearPooling(6, 4, 32, seed=0)
    visual = torch.randn(2, 1, 3, 3, 6)
    text = torch.randn(2, 5, 1, 1, 4)
    out = mcb(visual, text)
    assert out.shape == (2, 5, 3, 3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 5, 3, 3), atol=1e-4, rtol=0)


def test_hashes_are_buffers_that_travel_with_the_state_dict():
    a = CompactBilinearPooling(6, 4, 32, seed=0)
    b = CompactBilinearPooling(6, 4, 32, seed=1)
    assert not torch.equal(a.sketch_visual.hashes, b.sketch_visual.hashes)
    b.load_state_dict(a.state_dict())
    v, t = torch.randn(6), torch.randn(4)
    torch.testing.assert_close(a(v, t), b(v, t))
    assert "sketch_visual.hashes" in a.state_dict() and "sketch_text.signs" in a.state_dict()


@pytest.mark.parametrize("post,d", [("l2", 32), ("l2", 15), ("none", 16)])
def test_fused_linear_equals_the_layer_on_the_formed_vectors(post, d):
    torch.manual_seed(0)
    mcb = CompactBilinearPooling(6, 4, d, post=post, seed=1)
    layer = torch.nn.Linear(d, 5)
    visual = torch.randn(2, 7, 6, requires_grad=True)
    text = torch.randn(2, 3, 4, requires_grad=True)
    fused = mcb.fused_linear(visual, text, layer)
    reference = layer(mcb(visual[:, None], text[:, :, None]))  # forms the [2, 3, 7, d] vectors
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-4)
    # the gradients agree too, for the inputs and the layer's weight
    grads = torch.autograd.grad(fused.square().sum(), [visual, text, layer.weight])
    ref_grads = torch.autograd.grad(reference.square().sum(), [visual, text, layer.weight])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    shared = mcb.fused_linear(visual, text[:1], layer)  # one set of queries for every image
    torch.testing.assert_close(shared[1], layer(mcb(visual[1][None], text[0][:, None])), atol=1e-5, rtol=1e-4)


def test_post_processing_choices():
    with pytest.raises(ValueError, match="post must be one of"):
        CompactBilinearPooling(6, 4, 32, post="sqrt")
    with pytest.raises(ValueError, match="needs post 'l2' or 'none'"):
        CompactBilinearPooling(6, 4, 32).fused_linear(torch.randn(1, 2, 6), torch.randn(1, 1, 4), torch.nn.Linear(32, 3))
