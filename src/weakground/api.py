"""The public Python API: ground phrases in images from Python, with the same model and answers as the CLI.

    import weakground

    g = weakground.load("bridge")                    # a method that needs no training, by name
    g = weakground.load("runs/x/checkpoints/train_best.safetensors")   # or a trained checkpoint
    for r in g.locate("photo.jpg", ["the dog", "a red shirt"]):       # a path, a PIL image or a uint8 array
        print(r.phrase, r.point, r.peak, r.boxes)
    maps = g.heatmaps(images, ["the dog"])            # [B, 3, H, W] float in [0, 1] -> [B, P, h, w]
    g.retrieve(["a red circle"], image_paths, k=5)   # joint-space methods: text -> image
    g.rank_captions("photo.jpg", captions, k=5)      # and image -> text
    c = weakground.load_captioner("runs/ss_attention_cpu/checkpoints/train_best.safetensors")
    c.caption("photo.jpg")                            # a caption, each object word with its box

Everything here is :mod:`weakground.engine.inference`, re-exported under stable names.
"""

from weakground.engine.inference import (CaptionPredictor, GroundedCaption, Grounding, Predictor, ground_maps, load,
                                         load_captioner)

__all__ = ["CaptionPredictor", "GroundedCaption", "Grounding", "Predictor", "ground_maps", "load", "load_captioner"]
