import pytest
import torch
from torch.nn import functional as F

from weakground.errors import InputError, WeakgroundError
from weakground.methods import create_method


def make(tiny_backbone, names, **params):
    torch.manual_seed(0)
    return create_method("mcb_attention", tiny_backbone, names, {"mcb_dim": 64, "hidden": 8, **params})


def tiny_batch(p=2, a=0):
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(6, 1, 24, 24, generator=g), "labels": torch.randint(10, (6, p), generator=g)}
    if a:
        batch["absent"] = torch.randint(10, (6, a), generator=g)
    return batch


def test_heatmaps_shape_range_and_phrase_forms(tiny_backbone, digit_names):
    model = make(tiny_backbone, digit_names).eval()
    maps = model.heatmaps(torch.rand(3, 1, 24, 24), ["7", "seven", "0"])
    assert maps.shape == (3, 3, 12, 12)  # feature stride 2
    assert torch.isfinite(maps).all() and (maps >= 0).all() and (maps <= 1).all()
    torch.testing.assert_close(maps[:, 0], maps[:, 1])  # "7" and "seven" name the same label


def test_unknown_label_and_bad_images_are_clear_errors(tiny_backbone, digit_names):
    model = make(tiny_backbone, digit_names).eval()
    with pytest.raises(InputError, match="unknown label 'eleven'"):
        model.heatmaps(torch.rand(1, 1, 24, 24), ["eleven"])
    with pytest.raises(InputError, match="3 channel"):
        model.heatmaps(torch.rand(1, 3, 24, 24), ["1"])
    with pytest.raises(InputError, match="minimum side"):
        model.heatmaps(torch.rand(1, 1, 8, 8), ["1"])
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        model.heatmaps(torch.rand(1, 24, 24), ["1"])
    with pytest.raises(WeakgroundError, match="unknown key 'mcb_size'"):
        create_method("mcb_attention", tiny_backbone, digit_names, {"mcb_size": 3})


@pytest.mark.parametrize("params", [{}, {"query": "phrase"}, {"absent_queries": 1}, {"pooling": "normalized"},
                                    {"absent_queries": 1, "mining": 0.5}, {"mcb_post": "l2"},
                                    {"absent_queries": 1, "erasing": 1.0},
                                    {"absent_queries": 1, "erasing": 1.0, "preserving": 1.0},
                                    {"absent_queries": 1, "classifier_bias": "absent"}])
def test_loss_is_finite_and_decreases_on_a_tiny_batch(tiny_backbone, digit_names, params):
    model = make(tiny_backbone, digit_names, **params)
    batch = tiny_batch(p=2, a=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # same phrasing draws each step, so the loss is comparable
        out = model.loss(batch)
        assert set(out) >= {"total", "ce", "pair", "sparsity", "accuracy"}
        assert torch.isfinite(out["total"])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_absent_only_bias_leaves_an_empty_map_naming_no_digit(tiny_backbone, digit_names):
    model = make(tiny_backbone, digit_names, absent_queries=1, classifier_bias="absent")
    with torch.no_grad():
        model.classifier.absent_bias.fill_(0.7)
    empty = model.classifier(torch.zeros(2, 3, model.backbone.out_channels))
    torch.testing.assert_close(empty[..., :10], torch.zeros(2, 3, 10))  # every digit scores 0 ...
    torch.testing.assert_close(empty[..., 10], torch.full((2, 3), 0.7))  # ... and "absent" its bias
    features = torch.randn(4, model.backbone.out_channels)
    expected = features @ model.classifier.weight.T
    expected[:, 10] += 0.7
    torch.testing.assert_close(model.classifier(features), expected)
    assert "classifier.bias" not in model.state_dict() and "classifier.absent_bias" in model.state_dict()
    with pytest.raises(WeakgroundError, match="classifier_bias 'absent' needs method.params.absent_queries > 0"):
        make(tiny_backbone, digit_names, classifier_bias="absent")
    with pytest.raises(WeakgroundError, match="classifier_bias"):
        make(tiny_backbone, digit_names, absent_queries=1, classifier_bias="none")


def test_mining_term_is_the_queried_digits_probability_outside_the_map(tiny_backbone, digit_names):
    model = make(tiny_backbone, digit_names, mining=0.5, pooling="normalized").eval()
    features = torch.rand(2, 4, 3, 3)
    attention = torch.rand(2, 1, 3, 3)
    labels = torch.tensor([[3], [7]])
    with torch.no_grad():
        model.classifier = torch.nn.Linear(4, 10)
        got = model.mining_loss(features, attention, labels)
        # naive reference: pool each image's features with 1 - r by hand, softmax, read the queried class
        probs = []
        for b in range(2):
            rest = 1 - attention[b, 0]
            pooled = (features[b] * rest).sum(dim=(1, 2)) / (rest.sum() + 1e-3)
            probs.append(model.classifier(pooled).softmax(-1)[labels[b, 0]])
    torch.testing.assert_close(got, torch.stack(probs).mean())
    out = make(tiny_backbone, digit_names, mining=0.5).loss(tiny_batch(p=2))
    assert "mining" in out and 0 < float(out["mining"]) < 1
    assert "mining" not in make(tiny_backbone, digit_names).loss(tiny_batch(p=2))  # off by default: the paper's loss


# (term, the image the fixed model sees given the upsampled map, the per-image loss given the digit's probability)
PERTURBATION_TERMS = [
    ("erasing", lambda image, mask: image * (1 - mask), lambda prob: prob),
    ("preserving", lambda image, mask: image * mask, lambda prob: -torch.log(prob)),
]


@pytest.mark.parametrize("term, perturb, per_image", PERTURBATION_TERMS, ids=[t[0] for t in PERTURBATION_TERMS])
def test_perturbation_terms_match_a_naive_reference(tiny_backbone, digit_names, term, perturb, per_image):
    """erasing: the queried digit's probability once its map is erased from the image; preserving: its
    cross-entropy once everything outside the map is erased."""
    model = make(tiny_backbone, digit_names, **{term: 1.0}).eval()
    images = torch.rand(2, 1, 24, 24)
    attention = torch.rand(2, 12, 12)  # the tiny backbone's stride 2
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        queries = model._query_vectors(["3", "7"])
        got = getattr(model, f"{term}_loss")(images, attention, queries, labels)
        # naive reference, one image at a time: upsample the map, mask, run the whole model again on that query
        values = []
        for b in range(2):
            mask = F.interpolate(attention[b][None, None], size=(24, 24), mode="bilinear", align_corners=False)
            masked = perturb(images[b:b + 1], mask)
            r = model.heatmaps(masked, [str(int(labels[b]))])[0, 0]
            features = model.backbone(masked)[0]
            pooled = (features * r).sum(dim=(1, 2)) / r.numel()
            values.append(per_image(model.classifier(pooled).softmax(-1)[labels[b]]))
    torch.testing.assert_close(got, torch.stack(values).mean())
    out = make(tiny_backbone, digit_names, **{term: 1.0}).loss(tiny_batch(p=2))
    assert term in out and torch.isfinite(out[term]) and float(out[term]) > 0
    assert term not in make(tiny_backbone, digit_names).loss(tiny_batch(p=2))  # off by default
    with pytest.raises(WeakgroundError, match=f"{term} must be >= 0"):
        make(tiny_backbone, digit_names, **{term: -1.0})


@pytest.mark.parametrize("term", ["erasing", "preserving"])
def test_perturbation_terms_teach_only_the_map_not_the_weights(tiny_backbone, digit_names, term):
    """Held-fixed weights: the model must not learn to answer "absent" whenever it sees an erased patch."""
    model = make(tiny_backbone, digit_names, **{term: 1.0})
    attention = torch.full((2, 12, 12), 0.5, requires_grad=True)
    queries = model._query_vectors(["3", "7"])
    getattr(model, f"{term}_loss")(torch.rand(2, 1, 24, 24), attention, queries, torch.tensor([3, 7])).backward()
    assert attention.grad is not None and attention.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards


def test_training_step_is_deterministic(tiny_backbone, digit_names):
    def one_step():
        model = make(tiny_backbone, digit_names)
        opt = torch.optim.SGD(model.param_groups(0.1, 0.1), lr=0.1)
        out = model.loss(tiny_batch())
        out["total"].backward()
        opt.step()
        return float(out["total"].detach()), model.attention_out.weight.detach().clone()

    a, b = one_step(), one_step()
    assert a[0] == b[0]
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_backbone_learns_at_a_tenth_of_the_rate(tiny_backbone, digit_names):
    model = make(tiny_backbone, digit_names)
    groups = {g["name"]: g for g in model.param_groups(0.1, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_paper_backbone_keeps_input_resolution(digit_names):
    from weakground.config import BackboneConfig
    from weakground.vision.resnet import ResNet

    net = ResNet(BackboneConfig(widths=[4, 4, 4, 4], blocks=[1, 1, 1, 1]))  # strides 1, no max pooling
    assert net.stride == 1 and net(torch.rand(1, 1, 20, 20)).shape == (1, 4, 20, 20)
    pooled = ResNet(BackboneConfig(widths=[4, 4, 4, 4], blocks=[1, 1, 1, 1], stem_stride=2, maxpool=True,
                                   stage_strides=[1, 2, 2, 2]))
    assert pooled.stride == 32 and pooled(torch.rand(1, 1, 64, 64)).shape == (1, 4, 2, 2)


# whole images per chunk, then one query per chunk; the widest fused tensor is [.., mcb_dim 64] or [.., hidden 8]
@pytest.mark.parametrize("post,width", [("signed_sqrt_l2", 64), ("l2", 8)])
@pytest.mark.parametrize("queries_per_chunk", [3, 1])
def test_chunked_fusion_matches_one_pass_in_values_and_gradients(tiny_backbone, digit_names, monkeypatch, post,
                                                                 width, queries_per_chunk):
    import weakground.methods.mcb_attention as mcb_module

    budget = 12 * 12 * width * queries_per_chunk
    model = make(tiny_backbone, digit_names, queries_per_image=3, absent_queries=1, mcb_post=post)
    batch = tiny_batch(p=3, a=1)
    maps = model.eval().heatmaps(batch["images"], ["1", "2", "3"])
    whole = model.train().loss(batch)
    whole["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.load_state_dict(make(tiny_backbone, digit_names, queries_per_image=3, absent_queries=1,
                               mcb_post=post).state_dict())

    monkeypatch.setattr(mcb_module, "FUSED_ELEMENTS_PER_CHUNK", budget)
    torch.testing.assert_close(model.eval().heatmaps(batch["images"], ["1", "2", "3"]), maps)
    chunked = model.train().loss(batch)
    chunked["total"].backward()
    torch.testing.assert_close(chunked["total"], whole["total"])
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_l2_post_processing_folds_the_first_convolution_into_the_sketch(tiny_backbone, digit_names):
    """With mcb_post "l2" the map comes from CompactBilinearPooling.fused_linear; it must equal the layers applied
    to the formed, L2-normalised MCB vectors."""
    model = make(tiny_backbone, digit_names, mcb_post="l2").eval()
    images = tiny_batch(p=2)["images"]
    with torch.no_grad():
        maps = model.heatmaps(images, ["1", "2"])
        features = model.backbone(images)
        queries = model._query_vectors(["1", "2"])
        fused = model.mcb(features.permute(0, 2, 3, 1)[:, None], queries[None, :, None, None, :])
        reference = torch.sigmoid(model.attention_out(F.relu(model.attention_hidden(fused))).squeeze(-1))
    assert torch.allclose(fused.norm(dim=-1), torch.ones(()), atol=1e-4)
    torch.testing.assert_close(maps, reference, atol=1e-5, rtol=1e-4)
    with pytest.raises(WeakgroundError, match="mcb_post"):
        make(tiny_backbone, digit_names, mcb_post="none")
