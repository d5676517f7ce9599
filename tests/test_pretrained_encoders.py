"""The pretrained encoders that ship in pip wheels: EfficientNet-Lite0 levels/classifier and MiniLM embeddings."""

import torch
from skimage import data

from weakground.io import image_to_tensor
from weakground.text.minilm import shared_minilm
from weakground.vision.efficientnet_lite import EfficientNetLite, pretrained_lite


def test_lite_levels_classifier_and_fused_copy():
    model = pretrained_lite()
    x = torch.nn.functional.interpolate(image_to_tensor(data.chelsea()), size=(224, 320), mode="bilinear")
    with torch.no_grad():
        feats = model(x)
        for name, channels in (("c2", 24), ("c3", 40), ("c4", 112), ("c5", 320), ("head", 1280)):
            stride = model.strides[name]
            assert tuple(feats[name].shape) == (1, channels, 224 // stride, 320 // stride)
        logits = model.logits(feats["head"])
        assert torch.allclose(logits, model.net(model.normalize(x)), atol=1e-4)  # same as the library's forward
        top5 = logits.topk(5).indices[0].tolist()
        assert {281, 282, 285} & set(top5)  # tabby / tiger cat / Egyptian cat: the weights really are ImageNet's
        # The spatial mean of the class-activation map is the logit minus the bias.
        cam = model.class_activation(feats["head"], torch.eye(1000)[[285]])
        assert torch.allclose(cam.mean(dim=(-2, -1))[0, 0], logits[0, 285] - model.classifier.bias[285], atol=1e-3)
        fused = EfficientNetLite().fuse_batchnorm()
        assert torch.allclose(fused(x, levels=("head",))["head"], feats["head"], atol=1e-3)


def test_minilm_embeddings_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKGROUND_CACHE", str(tmp_path))
    lm = shared_minilm()
    e = lm.embed(["a cat", "a kitten", "a sports car"])
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # meaning, not spelling: cat is nearer kitten than sports car
    cached = lm.embed_cached(["a cat", "a kitten"])
    assert torch.allclose(cached, e[:2], atol=1e-5) and len(list(tmp_path.glob("minilm_*.pt"))) == 1
    tokens = lm.tokens(["a cat"])
    assert tokens.tokens[0][0] == "[CLS]" and tokens.hidden.shape[-1] == 384
