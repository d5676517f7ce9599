import pytest
import torch

from weakground.config import BackboneConfig
from weakground.engine.checkpoint import read_checkpoint, save_checkpoint, load_weights
from weakground.errors import WeakgroundError
from weakground.methods import create_method
from weakground.methods.matchmap import SCORE_POOLINGS, matchmap, matchmap_score, phrase_heatmaps
from weakground.text.minilm import TokenEmbeddings
from weakground.text.words import piece_groups, words_from_tokens

CAPTIONS = ["a red circle to the left of a blue square", "two green stars .", "the small striped triangle",
            "a large yellow ring above the cross"]
RGB = BackboneConfig(in_channels=3)


def make(seed=0, **params):
    torch.manual_seed(seed)
    return create_method("matchmap", RGB, [], {"dim": 32, "image_hidden": 16, **params})


def images(n=4, h=64, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- pure functions ----------------------------------------------------------------------------------------------
def naive_score(m, n_words, pooling):
    """``m``: [N, L] one pair's matchmap; only the first n_words columns are real."""
    if n_words == 0:
        return 0.0
    cols = [[float(m[n, l]) for n in range(m.shape[0])] for l in range(n_words)]  # per word, its regions
    rows = [[float(m[n, l]) for l in range(n_words)] for n in range(m.shape[0])]  # per region, its words
    if pooling == "max_region_mean_word":
        return sum(max(c) for c in cols) / n_words
    if pooling == "max_word_mean_region":
        return sum(max(r) for r in rows) / len(rows)
    if pooling == "mean":
        return sum(sum(r) for r in rows) / (len(rows) * n_words)
    return max(max(r) for r in rows)


def test_matchmap_is_every_region_word_dot_product():
    g = torch.Generator().manual_seed(0)
    regions, words = torch.randn(2, 5, 3, generator=g), torch.randn(3, 4, 3, generator=g)
    sim = matchmap(regions, words)
    assert sim.shape == (2, 3, 5, 4)
    for b in range(2):
        for t in range(3):
            for n in range(5):
                for l in range(4):
                    assert float(sim[b, t, n, l]) == pytest.approx(float(regions[b, n] @ words[t, l]), abs=1e-6)


def test_matchmap_score_hand_computed():
    m = torch.tensor([[0.1, 0.5], [0.4, -0.2], [0.0, 0.0]])[None, None]  # N = 3 regions, L = 2 words
    mask = torch.tensor([[True, True]])
    expected = {"max_region_mean_word": 0.45, "max_word_mean_region": 0.3, "mean": 0.8 / 6, "max": 0.5}
    for pooling, value in expected.items():
        assert float(matchmap_score(m, mask, pooling)) == pytest.approx(value)


@pytest.mark.parametrize("pooling", list(SCORE_POOLINGS))
def test_matchmap_score_matches_loop_reference_with_padding(pooling):
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(2, 3, 4, 5, generator=g) - 3.0  # all negative: padding must not win a max
    lengths = [5, 2, 0]
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    sim = sim.masked_fill(~mask[None, :, None, :], 7.0)  # padded entries hold garbage that must be ignored
    scores = matchmap_score(sim, mask, pooling)
    for b in range(2):
        for t in range(3):
            assert float(scores[b, t]) == pytest.approx(naive_score(sim[b, t], lengths[t], pooling), abs=1e-5)


@pytest.mark.parametrize("weighting", ["mean", "max_weighted"])
def test_phrase_heatmaps_match_loop_reference(weighting):
    g = torch.Generator().manual_seed(2)
    sim = torch.randn(2, 2, 6, 3, generator=g)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    maps = phrase_heatmaps(sim, mask, weighting)
    assert (maps[:, 1] == 0).all()  # no word, no map
    for b in range(2):
        relu = sim[b, 0, :, :2].clamp_min(0)
        weights = torch.ones(2) if weighting == "mean" else relu.max(0).values
        expected = (relu * weights).sum(1) / weights.sum().clamp_min(1e-12)
        torch.testing.assert_close(maps[b, 0], expected)


def test_word_pieces_are_averaged_into_words():
    assert piece_groups(["[CLS]", "x", "##yl", "a", ".", "'", "s", "[SEP]"]) == [("xyl", [1, 2]), ("a", [3]),
                                                                                ("s", [6])]
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    tokens = TokenEmbeddings(hidden, torch.ones(2, 5), [["[CLS]", "red", "##dish", "box", "[SEP]"],
                                                        ["[CLS]", ",", "[SEP]"]])
    words = words_from_tokens(tokens)
    assert words.words == [["reddish", "box"], []]
    assert words.mask.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(words.hidden[0, 0], (hidden[0, 1] + hidden[0, 2]) / 2)
    torch.testing.assert_close(words.hidden[0, 1], hidden[0, 3])
    assert (words.hidden[1] == 0).all()


# -- the method ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return make().eval()


def test_heatmaps_shapes_any_size_and_hard_phrases(model):
    phrases = ["red circle", "", " . , ", "zxqv flurbish", "a " * 300 + "square"]  # OOV, 300 words: truncated
    maps = model.heatmaps(images(2, 64, 64), phrases)
    assert maps.shape == (2, len(phrases), 4, 4)  # stride 16
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert (maps[:, 1:3] == 0).all() and (maps[:, [0, 3, 4]].sum((-1, -2)) > 0).all()  # no word, no map
    for h, w in [(50, 77), (32, 32)]:
        maps = model.heatmaps(images(1, h, w), phrases[:2])
        assert maps.shape[:2] == (1, 2) and maps.shape[-2:] == model.image_encoder(images(1, h, w)).shape[-2:]
        assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert model.heatmaps(images(2), []).shape == (2, 0, 4, 4)


@torch.no_grad()
def test_scores_are_the_exact_matchmap_score(model):
    x = images(2, 32, 48)
    scores = model.scores(x, CAPTIONS)
    regions, _ = model.regions(x)
    for t, caption in enumerate(CAPTIONS):
        words, mask = model.words([caption])
        words = words[0][mask[0]]  # [L, D]
        for b in range(2):
            best_per_word = [max(float(regions[b, n] @ words[l]) for n in range(regions.shape[1]))
                             for l in range(len(words))]
            assert float(scores[b, t]) == pytest.approx(sum(best_per_word) / len(words), abs=1e-5)


def test_global_embeddings_are_unit_vectors(model):
    img, txt = model.encode_image(images(3)), model.encode_text(CAPTIONS + [""])
    assert img.shape == (3, 32) and txt.shape == (5, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt[:4].norm(dim=-1), torch.ones(4))
    assert (txt[4] == 0).all()
    assert model.scores(images(2), []).shape == (2, 0)


@pytest.mark.parametrize("params", [{}, {"negatives": "random", "score_pooling": "max"}])
def test_loss_decreases_on_a_tiny_batch(params):
    model = make(**params).train()
    batch = {"images": images(4, 32, 32), "captions": CAPTIONS}
    opt = torch.optim.Adam([p for g in model.param_groups(3e-3, 0.1) for p in g["params"]], lr=3e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # same random negatives each step, so losses are comparable
        out = model.loss(batch)
        assert set(out) >= {"total", "ranking", "accuracy"} and torch.isfinite(out["total"])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0]


def test_training_step_is_deterministic():
    def one_step():
        model = make(seed=3, negatives="random").train()
        opt = torch.optim.SGD(model.param_groups(0.1, 0.1), lr=0.1)
        torch.manual_seed(5)
        out = model.loss({"images": images(4, 32, 32), "captions": CAPTIONS})
        out["total"].backward()
        opt.step()
        return float(out["total"].detach()), model.word_map.weight.detach().clone()

    a, b = one_step(), one_step()
    assert a[0] == b[0]
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_frozen_encoders_stay_frozen_and_out_of_the_optimizer():
    model = make().train()
    assert not model.image_encoder.training and not model.text_encoder.training
    assert model.frozen_modules == ("text_encoder", "image_encoder")
    groups = model.param_groups(0.1, 0.1)
    assert [g["name"] for g in groups] == ["head"]
    assert sum(p.numel() for p in groups[0]["params"]) == sum(
        p.numel() for m in (model.region_map, model.word_map) for p in m.parameters())
    resnet = create_method("matchmap", BackboneConfig(in_channels=3, widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1],
                                                      stage_strides=[2, 2, 2, 2]), [],
                           {"image_encoder": "resnet", "dim": 8, "image_hidden": 0})
    assert resnet.frozen_modules == ("text_encoder",) and resnet.image_encoder.training is True
    assert [g["name"] for g in resnet.param_groups(0.1, 0.1)] == ["backbone", "head"]
    assert resnet.heatmaps(images(1, 40, 40), ["circle"]).shape == (1, 1, 3, 3)


def test_checkpoint_round_trip(tmp_path, model):
    path = tmp_path / "matchmap.safetensors"
    save_checkpoint(path, model, {"method": "matchmap"})
    state, meta = read_checkpoint(path)
    assert meta["method"] == "matchmap"
    assert not any(k.startswith(("image_encoder.", "text_encoder.")) for k in state)
    assert path.stat().st_size < 200_000  # heads only: the pretrained encoders stay in their packages
    other = make(seed=9).eval()
    load_weights(path, other, state)
    x = images(2)
    torch.testing.assert_close(other.heatmaps(x, ["red circle"]), model.heatmaps(x, ["red circle"]))
    torch.testing.assert_close(other.scores(x, CAPTIONS), model.scores(x, CAPTIONS))


def test_config_errors():
    with pytest.raises(WeakgroundError, match="unknown key 'margn'"):
        create_method("matchmap", RGB, [], {"margn": 0.1})
    for params, message in [({"score_pooling": "sum"}, "score_pooling"), ({"negatives": "semi"}, "negatives"),
                            ({"level": "c2"}, "level"), ({"image_encoder": "vit"}, "image_encoder"),
                            ({"heatmap_words": "max"}, "heatmap_words")]:
        with pytest.raises(WeakgroundError, match=message):
            create_method("matchmap", RGB, [], params)
    with pytest.raises(ValueError, match="one caption per image"):
        make().loss({"images": images(2), "captions": ["a"]})
