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


def test_log_sum_exp_pool_hand_computed_and_masked():
    from weakground.losses import log_sum_exp_pool

    scores = torch.tensor([[0.2, 0.6, -5.0], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    expected0 = math.log(math.exp(5 * 0.2) + math.exp(5 * 0.6)) / 5  # the masked -5 takes no part
    expected1 = 0.3 + math.log(3) / 5
    out = log_sum_exp_pool(scores, mask, gamma=5.0)
    assert torch.allclose(out, torch.tensor([expected0, expected1]), atol=1e-6)
    # One word: the pooled score is that word's score; large gamma: the maximum.
    assert abs(float(log_sum_exp_pool(torch.tensor([0.7]), torch.tensor([True]), 5.0)) - 0.7) < 1e-6
    assert abs(float(log_sum_exp_pool(scores[:1], mask[:1], 1000.0)) - 0.6) < 1e-3


def test_batch_softmax_loss_hand_computed():
    from weakground.losses import batch_softmax_loss

    r = torch.tensor([[0.5, 0.1], [0.2, 0.4]])
    g = 10.0

    def nll(pos, others):
        return -(g * pos - math.log(sum(math.exp(g * o) for o in others)))

    # images compete along columns, captions along rows; mean over the batch
    caption_given_image = nll(0.5, [0.5, 0.1]) + nll(0.4, [0.2, 0.4])
    image_given_caption = nll(0.5, [0.5, 0.2]) + nll(0.4, [0.1, 0.4])
    expected = (caption_given_image + image_given_caption) / 2
    assert abs(float(batch_softmax_loss(r, g)) - expected) < 1e-5
