"""Where does a checkpoint's heatmap peak land? On the phrase's own object, on another object the image's captions
mention, or on background -- overall and per phrase type (on the scenes, the object's category).

    python benchmarks/peak_landing.py runs/benchmarks/dsve_loc_cpu/checkpoints/train_best.safetensors

It reads the checkpoint's own dataset and inference settings (image size, shifted copies) and plays the pointing
game as the evaluation does (argmax of the map resized to the image, tolerance 0 px, any box of the phrase), so
its "own object" share equals the checkpoint's pointing accuracy on the same images. A wrong-object peak says the
model cannot tell the described object from its neighbours; a background peak says the map is not object-shaped.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch

from weakground.data.readers import read_dataset
from weakground.data.sources import dataset_spec
from weakground.engine.inference import load_checkpoint
from weakground.errors import WeakgroundError
from weakground.io import image_to_tensor, read_image
from weakground.metrics import heatmap_point, pointing_hit

KINDS = ("own object", "other object", "background")


def _xyxy(boxes: list) -> torch.Tensor:
    return torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=torch.float64).reshape(-1, 4)


def peak_landing(checkpoint: str, split: str, max_images: int) -> tuple[collections.Counter, dict]:
    """Counts of peaks per landing kind, overall and per phrase type."""
    model, config = load_checkpoint(checkpoint)  # in eval mode, with the run's inference settings
    records = read_dataset(dataset_spec(config.data), split).records[:max_images]
    overall: collections.Counter = collections.Counter()
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with torch.no_grad():
        for record in records:
            image = image_to_tensor(read_image(record.path))
            phrases = [p for caption in record.captions for p in caption.phrases if p.boxes]
            texts = list(dict.fromkeys(p.text for p in phrases))
            maps = model.grounding_maps(image, texts)[0]
            mentioned = _xyxy([box for p in phrases for box in p.boxes])
            for phrase in phrases:
                # The pointing game's own point and hit rule (defaults: argmax of the resized map, tolerance 0).
                point = heatmap_point(maps[texts.index(phrase.text)], (record.height, record.width))
                kind = (KINDS[0] if pointing_hit(point, _xyxy(phrase.boxes))
                        else KINDS[1] if pointing_hit(point, mentioned) else KINDS[2])
                overall[kind] += 1
                by_type[" ".join(phrase.phrase_types) or "(untyped)"][kind] += 1
    return overall, by_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a trained caption-level model (train_best.safetensors)")
    parser.add_argument("--split", default="val", help="which split of the checkpoint's dataset (default: val)")
    parser.add_argument("--images", type=int, default=200, help="first N images of the split (default: 200)")
    args = parser.parse_args()
    try:
        overall, by_type = peak_landing(args.checkpoint, args.split, args.images)
    except WeakgroundError as error:
        sys.exit(f"error: {error}")
    total = sum(overall.values())
    if total == 0:
        sys.exit(f"error: {args.checkpoint}: no phrase with boxes in the first {args.images} {args.split} images")
    print(f"{total} phrase mentions: " + ", ".join(f"{k} {overall[k] / total:.3f}" for k in KINDS))
    for name, counts in sorted(by_type.items(), key=lambda item: -sum(item[1].values())):
        n = sum(counts.values())
        print(f"  {name:12s} n={n:5d}  " + "  ".join(f"{k} {counts[k] / n:.3f}" for k in KINDS))


if __name__ == "__main__":
    main()
