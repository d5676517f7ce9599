"""A minimal joint-space method for tests of the caption pipeline and retrieval (registered as "_caption_probe")."""

import zlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from weakground.methods.base import JointSpaceGrounder
from weakground.registry import METHODS

SEEN_BATCHES: list[dict] = []
HEATMAP_INPUT_SIZES: list[tuple[int, int]] = []  # (H, W) the probe's heatmaps read, after prepare_images


@dataclass
class ProbeConfig:
    pass


@METHODS.register("_caption_probe")
class CaptionProbe(JointSpaceGrounder):
    """The smallest joint-space method: a 1x1 conv image map and a hashed bag of words, trained with a
    bidirectional softmax over the batch. It records every batch the trainer hands it."""

    name = "_caption_probe"
    config_class = ProbeConfig

    def __init__(self, config, backbone_config, class_names, inference=None):
        super().__init__(config, backbone_config, class_names, inference)
        self.conv = nn.Conv2d(3, 8, 1)
        self.words = nn.EmbeddingBag(64, 8, mode="mean")

    def _text(self, texts):
        ids = [[zlib.crc32(w.encode()) % 64 for w in t.lower().split()] or [0] for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return F.normalize(self.words(torch.tensor([j for i in ids for j in i]), offsets), dim=-1)

    def encode_image(self, images):
        return F.normalize(self.conv(images).mean((2, 3)), dim=-1)

    def encode_text(self, texts):
        return self._text(texts)

    def scores(self, images, texts):
        return self.encode_image(images) @ self.encode_text(texts).T

    def heatmaps(self, images, phrases, inference=None):
        images = self.prepare_images(images, inference)
        HEATMAP_INPUT_SIZES.append(tuple(images.shape[-2:]))
        return torch.einsum("bchw,pc->bphw", self.conv(images), self._text(phrases)).relu()

    def loss(self, batch):
        SEEN_BATCHES.append(batch)
        logits = 10 * self.encode_image(batch["images"]) @ self.encode_text(batch["captions"]).T
        target = torch.arange(len(logits))
        return {"total": F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)}


