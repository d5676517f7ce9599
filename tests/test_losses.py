import math

import torch

from weakground.losses import attention_sparsity, pair_loss


def test_pair_loss_hand_computed():
    # Three normalised features: 0 and 1 same class at distance sqrt(2); 2 a different class.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([3, 3, 5])
    m = 0.5
    same = (math.sqrt(2) - m) ** 2          # pair (0, 1)
    diff = -(2.0**2) - 2.0                  # pairs (0, 2): distance 2; (1, 2): distance sqrt(2)
    expected = (same + diff) / 3
    assert abs(float(pair_loss(f, labels, m)) - expected) < 1e-5


def test_pair_loss_is_zero_inside_margin_and_for_a_single_feature():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.01]])
    assert float(pair_loss(f, torch.tensor([1, 1]), margin=0.5)) == 0.0
    assert float(pair_loss(f[:1], torch.tensor([1]), margin=0.5)) == 0.0


def test_pair_loss_is_bounded_below():
    f = torch.randn(32, 8)
    labels = torch.arange(32)  # all pairs different
    assert float(pair_loss(f, labels, 0.5)) >= -4.0


def test_attention_sparsity_is_mean_square():
    r = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    assert float(attention_sparsity(r)) == (0 + 1 + 0.25 + 0.25) / 4
