import importlib.util
import math

import pytest
import torch
from torch.nn import functional as F

from weakground.config import BackboneConfig
from weakground.engine.checkpoint import load_weights, read_checkpoint, save_checkpoint
from weakground.errors import ConfigError, InputError, WeakgroundError
from weakground.methods import create_method
from weakground.methods.multilevel import multilevel_scores, selected_maps
from weakground.text.minilm import pieces_to_words

RGB = BackboneConfig(in_channels=3)
SMALL = {"dim": 32}
CAPTIONS = ["a red circle to the left of a blue square", "two green stars", "the striped triangle .",
            "a small yellow ring above the cross"]
HAS_RECURRENT = importlib.util.find_spec("weakground.text.recurrent") is not None


def make(**params):
    torch.manual_seed(0)
    return create_method("multilevel", RGB, [], {**SMALL, **params})


@pytest.fixture(scope="module")
def model():
    return make().eval()


def tiny_batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(n, 3, size, size, generator=g), "captions": CAPTIONS[:n]}


# -- the core formula against a loop written from the paper's equations ----------------------------------------
def naive_scores(visual, words, mask, gamma, attention, scale):
    """Eqs. 1-5 one image, text, word and level at a time."""
    b_n, l_n, n_n, _ = visual.shape
    c_n, w_n, _ = words.shape
    score = torch.zeros(b_n, c_n)
    pertinence = torch.zeros(b_n, c_n, w_n)
    level = torch.zeros(b_n, c_n, w_n, dtype=torch.long)
    heat = torch.zeros(b_n, c_n, l_n, n_n, w_n)
    for b in range(b_n):
        for c in range(c_n):
            best = []
            for t in range(w_n):
                per_level = []
                for lv in range(l_n):
                    cos = [float(words[c, t] @ visual[b, lv, n]) for n in range(n_n)]
                    if attention == "relu":
                        h = [max(0.0, x) for x in cos]
                    else:
                        z = sum(math.exp(scale * x) for x in cos)
                        h = [math.exp(scale * x) / z for x in cos]
                    heat[b, c, lv, :, t] = torch.tensor(h)
                    a = sum(h[n] * visual[b, lv, n] for n in range(n_n))
                    norm = float(a.norm())
                    per_level.append(float(words[c, t] @ a) / norm if norm > 1e-12 else 0.0)
                pertinence[b, c, t] = max(per_level)
                level[b, c, t] = per_level.index(max(per_level))
                if mask[c, t]:
                    best.append(max(per_level))
            score[b, c] = math.log(sum(math.exp(gamma * r) for r in best)) / gamma
    return score, pertinence, level, heat


@pytest.mark.parametrize("attention", ["relu", "softmax"])
def test_multilevel_scores_match_a_naive_loop(attention):
    g = torch.Generator().manual_seed(3)
    visual = F.normalize(torch.randn(2, 3, 5, 4, generator=g), dim=-1)
    words = F.normalize(torch.randn(3, 4, 4, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = multilevel_scores(visual, words, mask, 5.0, attention, 10.0)
    score, pertinence, level, heat = naive_scores(visual, words, mask, 5.0, attention, 10.0)
    torch.testing.assert_close(out.score, score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pertinence, pertinence, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.level, level)
    torch.testing.assert_close(out.attention, heat, atol=1e-5, rtol=1e-5)
    chosen = selected_maps(out)
    for b, c, t in [(0, 0, 1), (1, 2, 3), (1, 1, 0)]:
        torch.testing.assert_close(chosen[b, c, :, t], heat[b, c, level[b, c, t], :, t])


def test_word_dissimilar_to_every_location_scores_zero():
    visual = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # one image, one level, two locations
    words = torch.tensor([[[-0.6, -0.8]]])  # negative cosine everywhere: H = 0, attended feature 0
    out = multilevel_scores(visual, words, torch.ones(1, 1, dtype=torch.bool), 5.0)
    assert float(out.score) == 0.0 and float(out.attention.sum()) == 0.0


def test_pieces_pool_into_words_without_specials_or_punctuation():
    pieces = [["[CLS]", "a", "skate", "##board", "##er", ",", "dog", "[SEP]"], ["[CLS]", "[SEP]"],
              ["[CLS]", ".", ".", "[SEP]"]]
    pool, mask = pieces_to_words(pieces, 8)
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, False, False]]
    assert pool[0, 0].nonzero().flatten().tolist() == [1]
    torch.testing.assert_close(pool[0, 1, 2:5], torch.full((3,), 1 / 3))  # skate ##board ##er -> one word
    assert pool[0, 2].nonzero().flatten().tolist() == [6]
    # No word at all (empty / punctuation only): one pseudo-word over every piece, MiniLM's sentence pooling.
    torch.testing.assert_close(pool[1, 0, :2], torch.full((2,), 0.5))
    torch.testing.assert_close(pool[2, 0, :4], torch.full((4,), 0.25))


# -- the method through its public interface ---------------------------------------------------------------------
def test_heatmaps_shapes_any_size_and_odd_phrases(model):
    with torch.no_grad():
        maps = model.heatmaps(torch.rand(2, 3, 64, 64), ["red circle", "", "qzxqv blorf", "word " * 300, "?!"])
        assert maps.shape == (2, 5, 8, 8)  # the stride-8 grid
        assert torch.isfinite(maps).all() and (maps >= 0).all() and (maps <= 1 + 1e-5).all()
        assert model.heatmaps(torch.rand(1, 3, 70, 45), ["a star"]).shape == (1, 1, 9, 6)
        assert model.heatmaps(torch.rand(1, 3, 40, 40), []).shape == (1, 0, 5, 5)
        fixed = make(grid=6, heatmap="sentence", word_weights="softmax").eval()
        assert fixed.heatmaps(torch.rand(1, 3, 96, 50), ["a star"]).shape == (1, 1, 6, 6)


def test_bad_images_and_config_errors(model):
    with pytest.raises(InputError, match="minimum side"):
        model.heatmaps(torch.rand(1, 3, 16, 16), ["x"])
    with pytest.raises(InputError, match="channel"):
        model.heatmaps(torch.rand(1, 1, 64, 64), ["x"])
    with pytest.raises(WeakgroundError, match="unknown key 'dims'"):
        create_method("multilevel", RGB, [], {"dims": 3})
    for params, message in [({"attention": "sigmoid"}, "attention"), ({"levels": ["c9"]}, "levels"),
                            ({"levels": []}, "levels"), ({"levels": ["middle", "c4"]}, "levels"),
                            ({"text_encoder": "elmo"}, "text_encoder"), ({"grid": -1}, "grid"),
                            ({"presence": "peak"}, "presence")]:
        with pytest.raises(ConfigError, match=message):
            create_method("multilevel", RGB, [], params)
    with pytest.raises(ConfigError, match="in_channels"):
        create_method("multilevel", BackboneConfig(in_channels=1), [], {})


@pytest.mark.parametrize("score,chunk", [("both", 64), ("both", 2), ("sentence", 3), ("words", 64)])
def test_presence_weakest_word_adds_the_least_pertinent_word_to_the_trained_score(score, chunk):
    trained = make(score=score, text_chunk=chunk).eval()
    weakest = make(score=score, text_chunk=chunk, presence="score_weakest_word").eval()
    images = tiny_batch(2)["images"]
    with torch.no_grad():
        assert torch.equal(trained.presence_scores(images, CAPTIONS), trained.scores(images, CAPTIONS))
        got = weakest.presence_scores(images, CAPTIONS)
        # The reference: the trained score, plus the smallest R_t of the full (einsum) computation over real words.
        words, mask, _ = weakest.encode_words(CAPTIONS)
        cfg = weakest.config
        out = multilevel_scores(weakest.encode_levels(weakest.prepare_images(images)), words, mask,
                                cfg.gamma_words, cfg.attention, cfg.softmax_scale)
        smallest = torch.stack([torch.stack([out.pertinence[b, c][mask[c]].min() for c in range(len(CAPTIONS))])
                                for b in range(2)])
        want = weakest.scores(images, CAPTIONS) + smallest
    assert got.shape == (2, len(CAPTIONS))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert weakest.presence_scores(images, []).shape == (2, 0)


def test_joint_space_embeddings_and_exact_scores(model):
    images = tiny_batch()["images"]
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(CAPTIONS)
        assert img.shape == (4, 32) and txt.shape == (4, 32)
        torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
        scores = model.scores(images, CAPTIONS + [""])
        assert scores.shape == (4, 5) and torch.isfinite(scores).all()
        # scores() is the loss's R_w + R_s: recompute them from the building blocks
        visual = model.encode_levels(images)
        words, mask, sentence = model.encode_words(CAPTIONS)
        word_out, sentence_out = model._pair_scores(visual, words, mask, sentence)
        torch.testing.assert_close(scores[:, :4], word_out.score + sentence_out.score)
        assert model.encode_text([]).shape == (0, 32)


def test_frozen_encoders_stay_out_of_the_optimizer_and_checkpoint(model, tmp_path):
    groups = model.param_groups(1e-3, 0.1)
    trainable = {id(p) for g in groups for p in g["params"]}
    assert not trainable & {id(p) for p in model.image_encoder.parameters()}
    assert not trainable & {id(p) for p in model.text_encoder.parameters()}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"method": "multilevel"})
    state, _ = read_checkpoint(path)
    assert state and not any(k.startswith(("image_encoder.", "text_encoder.")) for k in state)
    other = make()
    for p in other.parameters():
        if p.requires_grad:
            torch.nn.init.zeros_(p)
    load_weights(path, other, state)
    other.eval()
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(other.heatmaps(x, ["a red circle"]), model.heatmaps(x, ["a red circle"]))


def test_loss_decreases_and_is_deterministic():
    def run(steps):
        m = make().train()
        opt = torch.optim.Adam([p for g in m.param_groups(3e-3, 0.1) for p in g["params"]], lr=3e-3)
        losses = []
        for _ in range(steps):
            out = m.loss(tiny_batch(size=48))
            assert set(out) >= {"total", "words", "sentence", "accuracy"} and torch.isfinite(out["total"])
            opt.zero_grad()
            out["total"].backward()
            opt.step()
            losses.append(float(out["total"].detach()))
        return losses

    losses = run(6)
    assert losses[-1] < 0.7 * losses[0]
    assert run(2) == losses[:2]


@pytest.mark.parametrize("params", [
    {"levels": ["middle"]}, {"levels": ["last"]}, {"nonlinear": False}, {"nonlinear_visual": False},
    {"attention": "softmax"}, {"word_units": "pieces"}, {"image_encoder": "resnet"},
    pytest.param({"text_encoder": "bilstm", "bilstm_hidden": 16},
                 marks=pytest.mark.skipif(not HAS_RECURRENT, reason="weakground.text.recurrent not on this branch")),
])
def test_ablations_build_and_give_a_finite_loss(params):
    backbone = BackboneConfig(in_channels=3, widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1], stage_strides=[1, 2, 2, 2],
                              stem_stride=2)
    m = create_method("multilevel", backbone, [], {**SMALL, **params})
    out = m.loss(tiny_batch(n=3, size=48))
    assert torch.isfinite(out["total"])
    out["total"].backward()
    grads = [p.grad for g in m.param_groups(1e-3, 0.1) for p in g["params"]]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        maps = m.eval().heatmaps(torch.rand(1, 3, 64, 64), ["a red circle", ""])
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    if params.get("text_encoder") == "bilstm" or params.get("image_encoder") == "resnet":
        assert "text_encoder" not in m.frozen_modules or params.get("text_encoder") != "bilstm"
        assert "image_encoder" not in m.frozen_modules or params.get("image_encoder") != "resnet"
