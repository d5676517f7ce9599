"""mcb_attention's caption mode (query: caption); the label mode's tests are in test_method_mcb_attention.py."""

import pytest
import torch
from torch.nn import functional as F

from weakground.config import BackboneConfig
from weakground.engine.checkpoint import load_weights, read_checkpoint, save_checkpoint
from weakground.errors import WeakgroundError
from weakground.methods import create_method
from weakground.methods.mcb_attention import MCBAttention
from weakground.methods.mcb_captions import MCBCaptionAttention

CAPTIONS = ["a red circle to the left of a blue square", "two green stars .", "the small striped triangle",
            "a large yellow ring above the cross"]
RGB = BackboneConfig(in_channels=3)


def make(seed=0, **params):
    torch.manual_seed(seed)
    return create_method("mcb_attention", RGB, [], {"query": "caption", "mcb_dim": 64, "hidden": 8,
                                                    "joint_dim": 16, **params})


def images(n=4, h=32, w=32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return make().eval()


def test_caption_query_builds_the_caption_variant_under_the_same_name(model):
    assert isinstance(model, MCBCaptionAttention) and isinstance(model, MCBAttention)
    assert model.name == "mcb_attention" and model.has_joint_space
    label = create_method("mcb_attention", BackboneConfig(widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1]),
                          [str(d) for d in range(10)], {"mcb_dim": 16, "hidden": 4})
    assert type(label) is MCBAttention and not label.has_joint_space


def test_heatmaps_are_attention_maps_for_any_phrase_and_size(model):
    phrases = ["red circle", "", "zxqv flurbish", "a " * 300 + "square"]
    maps = model.heatmaps(images(2, 64, 64), phrases)
    assert maps.shape == (2, 4, 4, 4)  # EfficientNet-Lite0 c4: stride 16
    assert torch.isfinite(maps).all() and (maps > 0).all() and (maps < 1).all()
    odd = model.heatmaps(images(1, 50, 77), ["circle"])
    assert odd.shape[:2] == (1, 1) and torch.isfinite(odd).all()


@torch.no_grad()
def test_scores_attend_each_image_with_each_text(model):
    x = images(2)
    scores = model.scores(x, CAPTIONS)
    assert scores.shape == (2, 4)
    for t, caption in enumerate(CAPTIONS):  # one text at a time: the batched pairs must agree
        features = model.backbone(x)
        sentence = model.text_encoder.embed([caption])
        attention = model.attend(features, F.relu(model.query_dense(sentence)))  # [2, 1, h, w]
        f = (features * attention).mean(dim=(2, 3)) if model.config.pooling == "mean" else \
            (features * attention).sum(dim=(2, 3)) / (attention.sum(dim=(2, 3)) + 1e-3)
        u = F.normalize(model.image_proj(f), dim=-1)
        v = F.normalize(model.text_proj(sentence), dim=-1)
        torch.testing.assert_close(scores[:, t], (u @ v.T)[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.encode_text(CAPTIONS).norm(dim=-1), torch.ones(4))
    emb = model.encode_image(x)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


@pytest.fixture(scope="module")
def word_model():
    return make(caption_queries="words").eval()


def _word_pair_scores(model, x, text):
    """A naive reference: each word of one text attended on its own, then its cosine with the word."""
    words, mask = model.text_encoder.words([text])
    words = words[0][mask[0]]  # [W, 384]
    features = model.backbone(x)
    attention = model.attend(features, F.relu(model.query_dense(words)))  # [B, W, h, w]
    u = F.normalize(model.image_proj((features[:, None] * attention[:, :, None]).mean(dim=(3, 4))), dim=-1)
    v = F.normalize(model.text_proj(words), dim=-1)
    return (u * v).sum(-1), attention, v  # [B, W], [B, W, h, w], [W, D]


@torch.no_grad()
def test_word_queries_score_a_caption_by_the_soft_maximum_over_its_words(word_model):
    x = images(2)
    scores = word_model.scores(x, CAPTIONS + [""])
    assert scores.shape == (2, 5) and torch.isfinite(scores).all()
    for t, text in enumerate(CAPTIONS + [""]):
        per_word, _, v = _word_pair_scores(word_model, x, text)
        gamma = word_model.config.gamma_words
        expected = torch.logsumexp(gamma * per_word, dim=-1) / gamma
        torch.testing.assert_close(scores[:, t], expected, rtol=1e-4, atol=1e-5)
        mean_word = F.normalize(v.mean(0), dim=-1)  # the text side of retrieval: the unit mean of its words
        torch.testing.assert_close(word_model.encode_text([text])[0], mean_word, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_word_queries_draw_a_phrase_map_from_its_words_weighted_by_their_match(word_model):
    x = images(2, 64, 64)
    phrases = ["a small blue square", "circle", "", "zxqv flurbish"]
    maps = word_model.heatmaps(x, phrases)
    assert maps.shape == (2, 4, 4, 4)
    assert torch.isfinite(maps).all() and (maps > 0).all() and (maps < 1).all()  # convex mixtures of sigmoids
    for p, phrase in enumerate(phrases):
        per_word, attention, _ = _word_pair_scores(word_model, x, phrase)
        weights = torch.softmax(word_model.config.gamma_words * per_word, dim=-1)  # [B, W]
        expected = (weights[..., None, None] * attention).sum(1)
        torch.testing.assert_close(maps[:, p], expected, rtol=1e-4, atol=1e-5)
    assert word_model.heatmaps(x, []).shape[:2] == (2, 0)


@pytest.mark.parametrize("params", [{}, {"negatives": "random", "pooling": "normalized"},
                                    {"caption_queries": "words", "mcb_post": "l2"}])
def test_loss_decreases_on_a_tiny_batch(params):
    m = make(**params).train()
    batch = {"images": images(4), "captions": CAPTIONS}
    opt = torch.optim.Adam([p for g in m.param_groups(3e-3, 0.1) for p in g["params"]], lr=3e-3)
    losses = []
    for _ in range(10):
        torch.manual_seed(1)
        out = m.loss(batch)
        assert set(out) >= {"total", "ranking", "sparsity", "accuracy"} and torch.isfinite(out["total"])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_training_step_is_deterministic():
    def one_step():
        m = make(seed=2, negatives="random").train()
        opt = torch.optim.SGD(m.param_groups(0.1, 0.1), lr=0.1)
        torch.manual_seed(4)
        out = m.loss({"images": images(4), "captions": CAPTIONS})
        out["total"].backward()
        opt.step()
        return float(out["total"].detach()), m.attention_out.weight.detach().clone()

    a, b = one_step(), one_step()
    assert a[0] == b[0]
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_frozen_encoders_stay_out_of_training_and_checkpoints(tmp_path, model):
    m = make().train()
    assert not m.backbone.training and not m.text_encoder.training
    groups = m.param_groups(0.1, 0.1)
    assert [g["name"] for g in groups] == ["head"]
    assert all(p.requires_grad for p in groups[0]["params"])
    path = tmp_path / "mcb_captions.safetensors"
    save_checkpoint(path, model, {"method": "mcb_attention"})
    state, _ = read_checkpoint(path)
    assert not any(k.startswith(("backbone.", "text_encoder.")) for k in state)
    other = make(seed=7).eval()
    load_weights(path, other, state)
    x = images(2)
    torch.testing.assert_close(other.heatmaps(x, ["red circle"]), model.heatmaps(x, ["red circle"]))
    torch.testing.assert_close(other.scores(x, CAPTIONS), model.scores(x, CAPTIONS))


def test_resnet_image_encoder_trains_at_the_backbone_rate():
    backbone = BackboneConfig(in_channels=3, widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1], stage_strides=[2, 2, 2, 2])
    torch.manual_seed(0)
    m = create_method("mcb_attention", backbone, [], {"query": "caption", "image_encoder": "resnet",
                                                      "mcb_dim": 32, "hidden": 4, "joint_dim": 8})
    assert m.frozen_modules == ("text_encoder",)
    groups = {g["name"]: g for g in m.param_groups(0.1, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    out = m.train().loss({"images": images(4), "captions": CAPTIONS})
    out["total"].backward()
    assert all(p.grad is not None for p in groups["backbone"]["params"])


def test_finetuned_efficientnet_trains_at_the_backbone_rate_and_is_checkpointed(tmp_path):
    m = make(finetune_image_encoder=True)
    assert m.frozen_modules == ("text_encoder",)
    m.train()
    # BatchNorm keeps reading each batch's statistics while fine-tuned (the preset's measured choice)
    assert m.backbone.training and not m.text_encoder.training
    groups = {g["name"]: g for g in m.param_groups(0.1, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    m.loss({"images": images(2, 64, 64), "captions": CAPTIONS[:2]})["total"].backward()
    stem = m.backbone.net.net._conv_stem.weight  # the first layer: the gradient reaches through the encoder
    assert any(p is stem for p in groups["backbone"]["params"]) and stem.grad.abs().sum() > 0
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.01)  # stands in for a training run: the checkpoint must carry these weights
    m.eval()
    path = tmp_path / "tuned.safetensors"
    save_checkpoint(path, m, {"method": "mcb_attention"})
    state, _ = read_checkpoint(path)
    assert any(k.startswith("backbone.") for k in state) and not any(k.startswith("text_encoder.") for k in state)
    other = make(seed=7, finetune_image_encoder=True).eval()
    x = images(2, 64, 64)
    assert not torch.allclose(other.heatmaps(x, ["red circle"]), m.heatmaps(x, ["red circle"]))
    load_weights(path, other, state)
    torch.testing.assert_close(other.heatmaps(x, ["red circle"]), m.heatmaps(x, ["red circle"]))


def test_config_errors():
    with pytest.raises(WeakgroundError, match="unknown key 'rank_margin'"):
        make(rank_margin=0.1)
    with pytest.raises(WeakgroundError, match="negatives"):
        make(negatives="semi")
    with pytest.raises(WeakgroundError, match="level"):
        make(level="c2")
    with pytest.raises(WeakgroundError, match="'onehot', 'phrase' or 'caption'"):
        make(query="sentence")
    with pytest.raises(WeakgroundError, match="mining needs a classifier"):
        make(mining=0.1)
    with pytest.raises(WeakgroundError, match="erasing needs a classifier"):
        make(erasing=1.0)
    with pytest.raises(WeakgroundError, match="preserving needs a classifier"):
        make(preserving=1.0)
    with pytest.raises(WeakgroundError, match="classifier_bias applies to the label classifier"):
        make(classifier_bias="absent")
    with pytest.raises(WeakgroundError, match="caption_queries"):
        make(caption_queries="phrases")
    with pytest.raises(WeakgroundError, match="gamma_words must be > 0"):
        make(caption_queries="words", gamma_words=0.0)
