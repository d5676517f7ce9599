"""Retrieval from a method's trained score (issue 31 item 5): the score in parts equals ``scores``, the chunked
image x caption matrix equals the unchunked one and a naive loop over pairs, and Recall@K read from a matrix equals
the embedding path's."""

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from weakground.config import BackboneConfig
from weakground.data.readers import read_dataset
from weakground.engine.phrase_eval import evaluate_phrase_grounding
from weakground.engine.retrieval import TrainedScorer, trained_score_matrix
from weakground.methods import create_method
from weakground.methods.center import CenterBaseline, CenterConfig
from weakground.methods.multilevel import multilevel_score, multilevel_scores
from weakground.metrics import retrieval_report
from weakground.metrics.retrieval import retrieval_report_from_scores

FLICKR = f"flickr30k_entities:{Path(__file__).parent / 'fixtures' / 'flickr30k_entities'}"
RGB = BackboneConfig(in_channels=3)
TEXTS = ["a red circle", "two green stars above the cross", "the striped triangle .", "a ring", "blue"]


SMALL = {"multilevel": {"dim": 16, "levels": ["c3", "c5"]}, "matchmap": {"dim": 16, "image_hidden": 8},
         "mcb_attention": {"query": "caption", "mcb_dim": 64, "hidden": 8, "joint_dim": 16},
         "dsve_loc": {"embed_dim": 16, "text_hidden": 8, "text_layers": 1}}


def make(name, **params):
    torch.manual_seed(0)
    return create_method(name, RGB, [], {**SMALL[name], **params}).eval()


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 48 + 8 * i, 64, generator=g) for i in range(n)]


@pytest.mark.parametrize("attention", ["relu", "softmax"])
def test_multilevel_score_equals_the_full_computation(attention):
    g = torch.Generator().manual_seed(0)
    visual = F.normalize(torch.randn(3, 4, 20, 16, generator=g), dim=-1)
    words = F.normalize(torch.randn(5, 6, 16, generator=g), dim=-1)
    mask = torch.rand(5, 6, generator=g) > 0.4
    mask[:, 0] = True
    want = multilevel_scores(visual, words, mask, 5.0, attention).score
    torch.testing.assert_close(multilevel_score(visual, words, mask, 5.0, attention), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,params", [("multilevel", {"score": "both"}), ("multilevel", {"score": "words"}),
                                         ("multilevel", {"score": "sentence", "text_chunk": 2}), ("matchmap", {}),
                                         ("mcb_attention", {"caption_queries": "words"}),
                                         ("mcb_attention", {"caption_queries": "sentence"}), ("dsve_loc", {})])
def test_chunked_matrix_equals_unchunked_and_a_naive_loop(name, params):
    model = make(name, **params)
    with torch.no_grad():
        naive = torch.tensor([[float(model.scores(image, [text])[0, 0]) for text in TEXTS] for image in images()])
        whole = trained_score_matrix(model, images(), TEXTS, text_chunk=len(TEXTS))
        chunked = trained_score_matrix(model, images(), TEXTS, text_chunk=2)
        batch = model.scores(images()[0], TEXTS)
    assert whole.shape == (3, len(TEXTS))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, naive, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch[0], whole[0], atol=1e-5, rtol=1e-4)


class _Table(CenterBaseline):
    """A joint space with a hand-written score table (image -> row by its height) and no split score: the
    scorer's fallback calls ``scores`` itself. Its embeddings rank every caption's image first."""

    has_joint_space = True

    def __init__(self, table: dict[int, dict[str, float]], width_of: dict[str, int], widths: list[int]) -> None:
        super().__init__(CenterConfig())
        self.table, self.width_of, self.widths = table, width_of, widths

    def scores(self, images, texts):
        return torch.tensor([[self.table[images.shape[-1]][t] for t in texts]] * images.shape[0])

    def encode_image(self, images):
        return F.one_hot(torch.tensor([self.widths.index(images.shape[-1])] * images.shape[0]),
                         len(self.widths)).float()

    def encode_text(self, texts):
        return F.one_hot(torch.tensor([self.widths.index(self.width_of[t]) for t in texts]), len(self.widths)).float()


def test_eval_ranks_by_the_trained_score_and_keeps_the_embedding_figures():
    records = read_dataset(FLICKR, "all").records
    widths = [r.width for r in records]
    captions = [(c.text, r.width) for r in records for c in r.captions if c.text.strip()]
    # every caption scores highest with the *next* image (by record order): R@1 is 0 both ways
    table = {w: {t: float(widths[(widths.index(cw) + 1) % len(widths)] == w) for t, cw in captions} for w in widths}
    assert len(set(widths)) == len(widths) == 3
    model = _Table(table, dict(captions), widths)
    with torch.no_grad():
        assert TrainedScorer(model, [t for t, _ in captions]).rows(torch.rand(1, 3, 8, widths[1])).shape == (1, 7)
    report = evaluate_phrase_grounding(model, FLICKR, "all", retrieval="score")
    assert report["protocol"]["retrieval"] == "score"
    assert report["recall"]["text_to_image"]["R@1"] == 0.0 and report["recall"]["image_to_text"]["R@1"] == 0.0
    assert report["recall"]["text_to_image"]["n_queries"] == 7 and report["recall"]["image_to_text"]["n_queries"] == 3
    assert report["recall_embedding"]["text_to_image"]["R@1"] == 1.0
    default = evaluate_phrase_grounding(model, FLICKR, "all")
    assert default["recall"] == report["recall_embedding"] and "recall_embedding" not in default
    assert default["protocol"]["retrieval"] == "embedding"


def test_recall_from_a_score_matrix_equals_the_embedding_path():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(15, 8, generator=g)
    t2i = torch.tensor([i // 3 for i in range(15)])  # image 5 has no caption (left out of image -> text)
    assert retrieval_report_from_scores(img @ txt.T, t2i, chunk_size=4) == retrieval_report(img, txt, t2i)


def test_recall_from_scores_hand_made_with_ties():
    # 2 images x 3 captions (0, 1 of image 0; 2 of image 1). Caption 1 ties image 1: pessimistic, rank 1.
    scores = torch.tensor([[0.9, 0.5, 0.1],
                           [0.2, 0.5, 0.8]])
    report = retrieval_report_from_scores(scores, torch.tensor([0, 0, 1]))
    assert report["text_to_image"] == {"R@1": 2 / 3, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "n_queries": 3}
    assert report["image_to_text"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "n_queries": 2}
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_report_from_scores(scores, torch.tensor([0, 2, 1]))
