"""Which of ``multilevel``'s scores says best whether a phrase is in the image? Presence AUROC of five readouts of
one checkpoint, chosen on validation, every one then scored on test.

    PYTHONPATH=src python benchmarks/presence_readouts.py --checkpoint runs/multilevel_cpu/checkpoints/train_best.safetensors

The readouts (``R_t``: a word's pertinence, Eqs. 1-4 of the paper; ``R_w``: their LSE pool; ``R_s``: the
sentence's score):

- ``score``: ``R_w + R_s``, the trained score (what ``presence: score`` reads);
- ``words``: ``R_w``; ``sentence``: ``R_s``;
- ``score_weakest_word``: ``R_w + R_s + min_t R_t`` (``presence: score_weakest_word``);
- ``score_mean_word``: ``R_w + R_s + mean_t R_t``.

The LSE pool rewards a phrase for any one word the image shows; presence needs all of them, hence the two that add
a word statistic. Present and absent phrases are drawn exactly as ``weakground eval``'s ``presence`` block draws
them (each image's own distinct phrase texts; as many of other images' phrases, seeded per image, with another
head noun). The readout with the best validation AUROC is ``chosen``; test AUROC is reported for all five so that
the choice can be read against the others, and the test figures played no part in it.

Writes (merges into) ``benchmarks/results/presence_readouts.json`` under the checkpoint's preset, with command and
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from weakground.data.readers import read_dataset
from weakground.data.sources import dataset_spec
from weakground.engine.driver import machine_description
from weakground.engine.inference import load
# The eval harness's own phrase sampling, so that the readouts are scored on the pairs `eval` scores.
from weakground.engine.phrase_eval import _absent_phrases, _phrase_pool, _queries
from weakground.io import read_image
from weakground.losses import log_sum_exp_pool
from weakground.methods.multilevel import multilevel_score, word_pertinence
from weakground.metrics import auroc

RESULTS = Path(__file__).parent / "results"
READOUTS = ("score", "words", "sentence", "score_weakest_word", "score_mean_word")


@torch.no_grad()
def readouts(model, image: torch.Tensor, texts: list[str]) -> np.ndarray:
    """``[len(READOUTS), T]``: every readout of one image against ``texts``."""
    cfg = model.config
    visual = model.score_image_features(image)
    words, mask, sentence = model.score_text_features(texts)
    pertinence = word_pertinence(visual, words, mask, cfg.attention, cfg.softmax_scale)[0]  # [T, W]
    r_w = log_sum_exp_pool(pertinence[None], mask[None], cfg.gamma_words)[0]
    ones = torch.ones(len(texts), 1, dtype=torch.bool)
    r_s = multilevel_score(visual, sentence[:, None], ones, cfg.gamma_words, cfg.attention, cfg.softmax_scale)[0]
    weakest = pertinence.masked_fill(~mask, float("inf")).amin(-1)
    mean = (pertinence * mask).sum(-1) / mask.sum(-1)
    return torch.stack([r_w + r_s, r_w, r_s, r_w + r_s + weakest, r_w + r_s + mean]).numpy()


@torch.no_grad()
def split_auroc(model, spec: str, split: str, max_images: int | None, progress: bool) -> dict:
    """AUROC of each readout over the split's present and absent phrases (the harness's sampling and seeds)."""
    from tqdm.auto import tqdm

    records = read_dataset(spec, split=split).records[:max_images]
    pool = _phrase_pool(records)
    present_scores, absent_scores = [], []
    for seed, record in enumerate(tqdm(records, disable=not progress, desc=split, unit="image"), start=1):
        present = list(dict.fromkeys(p.text for p in _queries(record) if p.text.strip()))
        absent = _absent_phrases(present, pool, seed)
        if not present or not absent:
            continue
        array = read_image(record.path, channels=3)
        image = torch.from_numpy(array).float().div_(255.0).permute(2, 0, 1)[None]
        scores = readouts(model, image, present + absent)
        present_scores.append(scores[:, :len(present)])
        absent_scores.append(scores[:, len(present):])
    pos, neg = np.concatenate(present_scores, axis=1), np.concatenate(absent_scores, axis=1)
    return {"images": len(records), "present": int(pos.shape[1]), "absent": int(neg.shape[1]),
            "auroc": {name: float(auroc(pos[i], neg[i])) for i, name in enumerate(READOUTS)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained multilevel checkpoint")
    parser.add_argument("--max-images", type=int, default=None, help="per split, for a quick look")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "presence_readouts.json")
    args = parser.parse_args(argv)
    predictor = load(args.checkpoint, method="multilevel")
    model, config, progress = predictor.model.eval(), predictor.config, not args.no_progress
    t0 = time.time()
    spec = dataset_spec(config.data, progress)
    val = split_auroc(model, spec, "val", args.max_images, progress)
    chosen = max(READOUTS, key=lambda name: val["auroc"][name])  # ties: the first in READOUTS
    test = split_auroc(model, spec, "test", args.max_images, progress)
    entry = {"checkpoint": str(args.checkpoint), "dataset": spec, "val": val, "chosen_on_val": chosen,
             "test": test, "test_auroc_of_chosen": test["auroc"][chosen], "seconds": round(time.time() - t0, 1),
             "command": "python benchmarks/presence_readouts.py " + " ".join(sys.argv[1:] if argv is None else argv),
             "machine": machine_description()}
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data[f"{model.name} ({config.name})"] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    for name in READOUTS:
        mark = "  <- chosen on val" if name == chosen else ""
        print(f"{name:20s} val {val['auroc'][name]:.4f}  test {test['auroc'][name]:.4f}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
