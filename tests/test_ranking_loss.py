import pytest
import torch

from weakground.losses import triplet_ranking_loss


def naive_ranking(scores, margin, pick):
    """Loop reference: for each anchor and direction, the hinges over the negatives chosen by ``pick``."""
    b = len(scores)
    total = 0.0
    for i in range(b):
        for direction in (scores, scores.T):
            hinges = [max(0.0, margin - float(direction[i, i]) + float(direction[i, j])) for j in range(b) if j != i]
            total += pick(i, hinges)
    return total / b


def test_hand_computed_two_by_two():
    s = torch.tensor([[0.9, 0.5], [0.8, 0.6]])
    # image 0: [0.2 - 0.9 + 0.5]_+ = 0; caption 0: [0.2 - 0.9 + 0.8]_+ = 0.1
    # image 1: [0.2 - 0.6 + 0.8]_+ = 0.4; caption 1: [0.2 - 0.6 + 0.5]_+ = 0.1  ->  (0 + 0.1 + 0.4 + 0.1) / 2
    for negatives in ("hardest", "all", "random"):  # with B = 2 every choice is the one other item
        assert float(triplet_ranking_loss(s, 0.2, negatives)) == pytest.approx(0.3)


@pytest.mark.parametrize("negatives,pick", [("hardest", lambda i, h: max(h)), ("all", lambda i, h: sum(h))])
def test_matches_loop_reference(negatives, pick):
    s = torch.randn(5, 5, generator=torch.Generator().manual_seed(3))
    assert float(triplet_ranking_loss(s, 0.3, negatives)) == pytest.approx(naive_ranking(s, 0.3, pick), rel=1e-5)


def test_random_negatives_follow_the_generator_and_never_pick_the_positive():
    s = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    a = triplet_ranking_loss(s, 0.2, "random", torch.Generator().manual_seed(7))
    b = triplet_ranking_loss(s, 0.2, "random", torch.Generator().manual_seed(7))
    assert float(a) == float(b)
    offsets = torch.randint(1, 6, (2, 6), generator=torch.Generator().manual_seed(7))
    rows = torch.arange(6)
    expected = sum(
        max(0.0, 0.2 - float(m[i, i]) + float(m[i, (i + int(offsets[d, i])) % 6]))
        for d, m in enumerate((s, s.T)) for i in range(6)) / 6
    assert float(a) == pytest.approx(expected, rel=1e-6)
    assert ((rows + offsets) % 6 != rows).all()
    # Bounded by the hardest choice, from below by zero.
    assert 0 <= float(a) <= float(triplet_ranking_loss(s, 0.2, "hardest")) + 1e-6


def test_zero_when_positives_win_by_the_margin_and_for_a_single_pair():
    s = torch.eye(4) + 0.1
    assert float(triplet_ranking_loss(s, 0.5, "hardest")) == 0.0
    one = torch.tensor([[0.3]], requires_grad=True)
    out = triplet_ranking_loss(one, 0.2)
    out.backward()
    assert float(out.detach()) == 0.0 and one.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="negatives"):
        triplet_ranking_loss(torch.zeros(2, 2), 0.2, "semi")
    with pytest.raises(ValueError, match="square"):
        triplet_ranking_loss(torch.zeros(2, 3), 0.2)
