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
    mcb = CompactBilinearPooling(7, 5, 16, signed_sqrt_l2=False, seed=3)
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
