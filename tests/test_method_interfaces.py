"""What every method shares (issue 28): declared variants instead of a constructor swap, encoders chosen from the
shared registries, the joint-space ability in the type, and inference settings given rather than written on."""

import dataclasses

import pytest
import torch

from weakground.config import BackboneConfig
from weakground.errors import ConfigError, WeakgroundError
from weakground.methods import Grounder, InferenceSettings, JointSpaceGrounder, create_method
from weakground.methods.dsve_loc import DSVELoc
from weakground.methods.matchmap import Matchmap
from weakground.methods.mcb_attention import MCBAttention, MCBAttentionConfig
from weakground.methods.mcb_captions import MCBCaptionAttention
from weakground.methods.multilevel import Multilevel
from weakground.registry import IMAGE_ENCODERS, METHODS, TEXT_ENCODERS
from weakground.text.encoders import TextEncoderOptions
from weakground.text.minilm import shared_minilm
from weakground.text.recurrent import RecurrentTextEncoder
from weakground.vision.efficientnet_lite import EfficientNetLite, pretrained_lite
from weakground.vision.resnet import ResNet

RESNET = BackboneConfig(in_channels=3, widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1], stage_strides=[1, 2, 2, 2])


def test_mcb_attention_declares_its_caption_variant():
    assert "__new__" not in vars(MCBAttention)
    assert MCBAttention.variants == {"caption": MCBCaptionAttention}
    assert MCBAttention.concrete_class(MCBAttentionConfig(query="caption")) is MCBCaptionAttention
    assert MCBAttention.concrete_class(MCBAttentionConfig()) is MCBAttention
    assert MCBCaptionAttention.concrete_class(MCBAttentionConfig(query="caption")) is MCBCaptionAttention
    assert METHODS.get("center").concrete_class(None) is METHODS.get("center")  # the default: the class itself


def test_the_encoder_registries_hold_every_encoder():
    assert IMAGE_ENCODERS.names() == ["efficientnet_lite0", "resnet"]
    assert TEXT_ENCODERS.names() == ["bilstm", "gru", "minilm", "sru"]
    with pytest.raises(WeakgroundError, match="unknown image encoder 'vgg'; known: efficientnet_lite0, resnet"):
        IMAGE_ENCODERS.get("vgg")


def test_image_encoder_factories_and_their_common_interface():
    frozen = IMAGE_ENCODERS.get("efficientnet_lite0")(RESNET, False)
    assert frozen is pretrained_lite(fused=True) and frozen.frozen and frozen.pretrained_parameters() == []
    tuned = IMAGE_ENCODERS.get("efficientnet_lite0")(RESNET, True)
    assert isinstance(tuned, EfficientNetLite) and tuned is not frozen and not tuned.frozen
    assert len(tuned.pretrained_parameters()) == len(list(tuned.parameters()))
    torch.manual_seed(0)
    resnet = IMAGE_ENCODERS.get("resnet")(RESNET, False)
    assert type(resnet) is ResNet and not resnet.frozen and resnet.pretrained_parameters() == []
    assert resnet.channels == {"c2": 4, "c3": 8, "c4": 8, "c5": 8} and not resnet.selects_level
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        levels = resnet.levels(x, ("c3", "c5"))
        assert list(levels) == ["c3", "c5"] and torch.equal(levels["c5"], resnet(x))
        assert torch.equal(resnet.feature_map(x, "c3"), resnet(x)) and resnet.feature_channels("c3") == 8
        lite = frozen.levels(x, ["c3", "head"])
        assert torch.equal(lite["head"], frozen(x, ("head",))["head"]) and lite["c3"].shape[1] == 40
        assert frozen.selects_level and frozen.feature_channels("c4") == 112
    with pytest.raises(ValueError, match="unknown ResNet level 'head'"):
        resnet.levels(x, ("head",))
    assert not frozen.levels(x, ("c3",))["c3"].requires_grad  # a frozen encoder builds no graph
    assert tuned.levels(x, ("c3",))["c3"].requires_grad


def test_text_encoder_factories_and_their_common_interface():
    lm = TEXT_ENCODERS.get("minilm")(TextEncoderOptions(hidden=3))
    assert lm is shared_minilm() and lm.out_dim == 384 and lm.pretrained_parameters() == []
    torch.testing.assert_close(lm.sentences(["a cat"]), lm.embed(["a cat"]))
    states, mask, sentence = lm.states(["a red cat", ""])
    torch.testing.assert_close(sentence, lm.embed(["a red cat", ""]), atol=1e-5, rtol=1e-5)
    assert states.shape[:2] == mask.shape and mask.sum(1).tolist() == [3, 1]
    pieces, piece_mask, _ = lm.states(["a red cat", ""], units="pieces")
    assert piece_mask.sum(1).tolist() == [3, 2] and piece_mask[1, :2].all()  # the empty text: [CLS] [SEP]
    rnn = TEXT_ENCODERS.get("gru")(TextEncoderOptions(hidden=4, bidirectional=True, freeze_glove=False))
    assert isinstance(rnn, RecurrentTextEncoder) and rnn.kind == "gru" and rnn.out_dim == 8
    assert rnn.pretrained_parameters() == [rnn.glove]
    assert TEXT_ENCODERS.get("bilstm")(TextEncoderOptions(hidden=4)).pretrained_parameters() == []
    tokens, token_mask, last = rnn.states(["two green stars"])
    assert tokens.shape == (1, 3, 8) and token_mask.all() and torch.equal(rnn.sentences(["two green stars"]), last)


@pytest.mark.parametrize("name, params, cls", [
    ("dsve_loc", {"embed_dim": 8, "text_hidden": 8, "text_layers": 1}, DSVELoc),
    ("multilevel", {"dim": 8, "levels": ["c3"]}, Multilevel),
    ("matchmap", {"dim": 8, "image_hidden": 0}, Matchmap),
    ("mcb_attention", {"query": "caption", "mcb_dim": 16, "hidden": 4, "joint_dim": 8}, MCBCaptionAttention),
])
def test_joint_space_methods_say_so_in_their_type(name, params, cls):
    model = create_method(name, BackboneConfig(in_channels=3), [], params)
    assert type(model) is cls and isinstance(model, JointSpaceGrounder) and model.has_joint_space


def test_methods_without_a_joint_space_lack_its_calls():
    label = create_method("mcb_attention", RESNET, [str(d) for d in range(10)], {"mcb_dim": 16, "hidden": 4})
    center = create_method("center", RESNET, [], {})
    for model in (label, center):
        assert not isinstance(model, JointSpaceGrounder) and not model.has_joint_space
        assert not hasattr(model, "encode_image") and not hasattr(model, "scores")
    assert not hasattr(Grounder, "encode_text")

    class Half(JointSpaceGrounder):
        name = "half"

    with pytest.raises(NotImplementedError, match="'half' declares a joint space but does not implement scores"):
        Half(None, RESNET, []).scores(torch.rand(1, 3, 32, 32), ["x"])


def test_inference_settings_are_given_at_construction_and_read_only():
    settings = InferenceSettings(input_size=48, shift_average=2)
    model = create_method("matchmap", BackboneConfig(in_channels=3), [], {"dim": 8}, inference=settings)
    assert model.inference is settings and model.input_size == 48 and model.shift_average == 2
    assert create_method("center", RESNET, []).inference == InferenceSettings()
    with pytest.raises(AttributeError):
        model.input_size = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.shift_average = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="eval.shift_average must be >= 1"):
        InferenceSettings(shift_average=0)
    with pytest.raises(ConfigError, match="input size must be >= 1"):
        InferenceSettings(input_size=0)
    with torch.no_grad():
        maps = model.eval().grounding_maps(torch.rand(1, 3, 80, 96), ["a red circle"])
        assert maps.shape == (1, 1, 48, 48)  # the 48-px square, averaged at full resolution
        own = model.grounding_maps(torch.rand(1, 3, 80, 96), ["a red circle"], InferenceSettings())
        assert own.shape == (1, 1, 5, 6)  # this call: the image as given, one pass on the stride-16 grid
