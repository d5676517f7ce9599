"""Captioning (Hu et al., paper 004 in ../shared/seeds): write a caption and ground each object word it writes.

Data flows one way: a caption dataset (the scenes, or Flickr30K Entities on disk) -> images resized to
``data.image_size`` -> region proposals from ``method.params.regions.source`` (a source that sees no ground truth,
or the labelled ``oracle``) -> region features, boxes and class probabilities, computed once per image by the
frozen encoder -> samples (image, caption tokens, and only when ``mu > 0`` the L_gnd targets sigma) -> the shared
trainer -> validation CIDEr picks the best epoch -> beam search on test: BLEU, METEOR, ROUGE-L, CIDEr-D and the
grounding F1 of every object word (F1_all, F1_loc).

Where boxes enter training, explicitly: ``grounding: boxes`` turns the ground-truth boxes of the entities a caption
mentions into sigma (the region of largest IoU with each box); ``grounding: grounder`` uses the peak of a weakly
supervised grounder's heatmap instead and never reads a box; with ``mu: 0`` there is no sigma at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from weakground.config import ExperimentConfig
from weakground.engine.tasks.base import TASKS, Batches, Task, read_square
from weakground.errors import ConfigError, WeakgroundError


@dataclass
class CaptionSplit:
    """One split, ready for the captioner.

    Attributes:
        ids: image ids.
        images: ``[N, S, S, 3]`` uint8, resized to ``data.image_size``.
        regions: the precomputed :class:`~weakground.regions.Regions` of every image (boxes in the S x S frame).
        references: per image, its reference captions.
        objects: per image, ``{class: [[x1, y1, x2, y2], ...]}`` ground-truth boxes in the S x S frame (scoring).
        phrases: per image and caption, ``[(phrase text, class, [boxes])]`` of its entities.
        input_counts: what reading found and left out or kept as it is, counted for the report: images skipped
            (no caption, no image file, unreadable image), captions skipped (empty), and what is kept but worth
            knowing (captions with no entity, images with no boxed object, which F1 cannot score).
    """

    ids: list[str]
    images: np.ndarray
    regions: Any
    references: list[list[str]]
    objects: list[dict[str, list[list[float]]]]
    phrases: list[list[list[tuple[str, str, list[list[float]]]]]] = field(default_factory=list)
    input_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CaptioningData:
    spec: str
    splits: dict[str, CaptionSplit]
    samples: list[tuple[int, list[int], np.ndarray | None]]  # (train image, tokens, sigma or None)


def _scaled(box: Any, sx: float, sy: float) -> list[float]:
    return [box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy]


def _read_split(spec: str, split: str, size: int, max_images: int | None, progress: bool) -> CaptionSplit:
    """Images resized to ``size`` and their captions' entities, boxes scaled to the resized frame."""
    from tqdm.auto import tqdm

    from weakground.data.readers import read_dataset

    records = read_dataset(spec, split=split).records[:max_images]
    out: dict[str, Any] = {"ids": [], "images": [], "references": [], "objects": [], "phrases": []}
    counts = dict.fromkeys(INPUT_COUNTS, 0)
    for record in tqdm(records, disable=not progress, desc=f"read {split}", unit="image", leave=False):
        captions = [c for c in record.captions if c.text.strip()]
        counts["skipped_empty_captions"] += len(record.captions) - len(captions)
        if not captions or record.path is None:
            counts["skipped_images_no_caption" if not captions else "skipped_images_no_file"] += 1
            continue
        read = read_square(record.path, size)
        if read is None:
            counts["skipped_images_unreadable"] += 1
            continue
        per_caption, objects = _entities(captions, size / read[1][1], size / read[1][0])
        counts["captions_without_entity"] += sum(not entities for entities in per_caption)
        counts["images_without_boxed_object"] += not objects
        out["images"].append(read[0])
        out["ids"].append(record.image_id)
        out["references"].append([c.text for c in captions])
        out["phrases"].append(per_caption)
        out["objects"].append(objects)
    if not out["ids"]:
        raise WeakgroundError(f"{spec}: split {split!r} has no readable image with a caption "
                              f"({counts['skipped_images_no_caption']} without a caption, {counts['skipped_images_no_file']} "
                              f"without a file, {counts['skipped_images_unreadable']} unreadable)")
    return CaptionSplit(out["ids"], np.stack(out["images"]), None, out["references"], out["objects"], out["phrases"],
                        counts)


# What _read_split counts per split (see CaptionSplit.input_counts), and _samples for the training split.
INPUT_COUNTS = ("skipped_images_no_caption", "skipped_images_no_file", "skipped_images_unreadable", "skipped_empty_captions",
                "captions_without_entity", "images_without_boxed_object")


def _entities(captions: list[Any], sx: float, sy: float
              ) -> tuple[list[list[tuple[str, str, list[list[float]]]]], dict[str, list[list[float]]]]:
    """Per caption its entities (text, class, boxes scaled to the square), and the image's boxes per class."""
    per_caption, objects = [], {}
    for c in captions:
        entities = [(p.text, p.phrase_types[0] if p.phrase_types else "", [_scaled(b, sx, sy) for b in p.boxes])
                    for p in c.phrases]
        per_caption.append(entities)
        for _, cls, boxes in entities:
            if cls and boxes:
                objects.setdefault(cls, []).extend(b for b in boxes if b not in objects.get(cls, []))
    return per_caption, objects


# (dataset spec, split, image size, region config) -> Regions: the frozen encoder's output depends on nothing
# else, so runs in one process (the benchmark's table rows) share it instead of encoding the images again
_REGIONS: dict[tuple, Any] = {}


def _proposals(split: CaptionSplit, region_config: Any, progress: bool, key: tuple | None = None) -> Any:
    """Region proposals for every image, then their features (the frozen encoder runs once per image)."""
    if key is not None and key in _REGIONS:
        return _REGIONS[key]
    from weakground.regions import RegionEncoder, build_source, encode_dataset

    source = build_source(region_config)
    boxes = []
    for image, objects in zip(split.images, split.objects):
        truth = [b for bs in objects.values() for b in bs] if source.needs_ground_truth else None
        boxes.append(source.boxes(image, truth))
    regions = encode_dataset(split.images, boxes, progress=progress, encoder=RegionEncoder(region_config))
    if key is not None:
        _REGIONS[key] = regions
    return regions


def _sigma_from_boxes(region_boxes: torch.Tensor, valid: torch.Tensor, targets: list[list[float]]) -> np.ndarray:
    """L_gnd's sigma: 1 on the valid region of largest IoU with each target box (the paper's rule)."""
    from weakground.metrics import box_iou

    sigma = np.zeros(len(valid), np.float32)
    if targets:
        iou = box_iou(torch.tensor(targets, dtype=torch.float32), region_boxes.float())
        iou[:, ~valid] = -1.0
        sigma[iou.argmax(1).numpy()] = 1.0
    return sigma


def _grounder_boxes(checkpoint: str, images: np.ndarray, phrases: list[list[list[tuple]]],
                    progress: bool) -> list[list[list[list[float]]]]:
    """Box-free targets: for each caption's entity phrase, the box of the peak region of a weakly supervised
    grounder's heatmap (``method.params.grounder_checkpoint``: a multilevel / matchmap / dsve_loc checkpoint
    trained on captions alone). Per image and caption, the list of boxes."""
    from tqdm.auto import tqdm

    from weakground.engine.inference import load

    grounder = load(Path(checkpoint), command="train")
    if not grounder.has_joint_space:
        raise ConfigError("method.params.grounder_checkpoint must hold a caption-trained grounder")
    out = []
    for image, captions in tqdm(list(zip(images, phrases)), disable=not progress, desc="grounder targets",
                                leave=False):
        texts = sorted({" ".join(text.split()) for c in captions for text, _, _ in c if text.strip()})
        found = {g.phrase: g.boxes for g in grounder.locate_array(image, texts)} if texts else {}
        per_caption = [[found[" ".join(t.split())] for t, _, _ in c if t.strip()] for c in captions]
        out.append([[list(boxes[0]) for boxes in c if boxes] for c in per_caption])
    return out


def _samples(params: Any, config: ExperimentConfig, split: CaptionSplit, vocab: Any, progress: bool
             ) -> list[tuple[int, list[int], np.ndarray | None]]:
    """(image, caption tokens, sigma) for every training caption; sigma only when L_gnd trains (mu > 0)."""
    targets = None
    if params.mu > 0 and params.grounding == "grounder":
        targets = _grounder_boxes(params.grounder_checkpoint, split.images, split.phrases, progress)
    samples = []
    for i, captions in enumerate(split.references):
        for j, text in enumerate(captions):
            sigma = None
            if params.mu > 0:
                boxes = (targets[i][j] if targets is not None
                         else [b for _, _, bs in split.phrases[i][j] for b in bs])  # the paper's box use
                sigma = _sigma_from_boxes(split.regions.boxes[i], split.regions.valid[i], boxes)
            samples.append((i, vocab.encode(text, params.max_len), sigma))
    return samples


def caption_batches(data: CaptioningData, batch_size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Shuffled batches over (image, caption) samples; the last incomplete batch is kept (CE needs no pairs)."""
    regions = data.splits["train"].regions
    order = rng.permutation(len(data.samples))
    for start in range(0, len(order), batch_size):
        chosen = [data.samples[k] for k in order[start:start + batch_size]]
        idx = torch.tensor([s[0] for s in chosen])
        width = max(len(s[1]) for s in chosen)
        tokens = torch.zeros(len(chosen), width, dtype=torch.long)
        for row, (_, ids, _) in enumerate(chosen):
            tokens[row, :len(ids)] = torch.tensor(ids)
        batch = {**regions[idx].decoder_inputs(), "tokens": tokens}
        if chosen[0][2] is not None:  # only when L_gnd trains: the one place a box-derived value enters a batch
            batch["grounding_targets"] = torch.from_numpy(np.stack([s[2] for s in chosen]))
        yield batch


def decode(model: Any, split: CaptionSplit, beam: int, limit: int | None = None, batch_size: int = 64
           ) -> list[tuple[list[int], torch.Tensor]]:
    """Beam-search captions for the first ``limit`` images of ``split``: ``(word ids, gamma [n, K])`` each."""
    regions, n = split.regions, len(split.ids) if limit is None else min(limit, len(split.ids))
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        out += model.generate(regions[sl].decoder_inputs(), beam)
    return out


def caption_report(model: Any, split: CaptionSplit, beam: int, limit: int | None = None,
                   metrics: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Captioning metrics (pycocoevalcap) and grounding F1 (F1_all, F1_loc) of ``model`` on ``split``."""
    from weakground.metrics.captioning import caption_scores, grounding_f1
    from weakground.text.vocab import CaptionVocabulary

    vocab = CaptionVocabulary(model.class_names)
    outputs = decode(model, split, beam, limit)
    ids = split.ids[:len(outputs)]
    candidates = {i: " ".join(vocab.decode(o[0])) or "<empty>" for i, o in zip(ids, outputs)}
    references = {i: refs for i, refs in zip(ids, split.references)}
    report = {"captions": caption_scores(references, candidates, metrics=metrics), "n_images": len(ids)}
    words = [model.grounded_objects(o[0], o[1], split.regions.boxes[i]) for i, o in enumerate(outputs)]
    generated = {i: [(w["class"], w["box"]) for w in ws] for i, ws in zip(ids, words)}
    # GVD's protocol exactly: each reference caption's annotated object words, and what each caption mentions
    truth = {i: [[(cls, bs) for _, cls, bs in cap if cls and bs] for cap in caps] for i, caps in zip(ids, split.phrases)}
    mentioned = {i: [{cls for _, cls, _ in cap if cls} for cap in caps] for i, caps in zip(ids, split.phrases)}
    report["grounding"] = grounding_f1(generated, truth, mentioned)
    report["examples"] = [{"image_id": i, "caption": candidates[i], "objects": w, "references": references[i][:2]}
                          for i, w in list(zip(ids, words))[:8]]
    return report


@TASKS.register("captioning")
class Captioning(Task):
    name = "captioning"
    best_key = "cider"

    def __init__(self) -> None:
        self._data: CaptioningData | None = None
        self._words: list[str] = []

    @staticmethod
    def _params(config: ExperimentConfig) -> Any:
        """The method's typed settings (its defaults filled in)."""
        from weakground.config import from_dict
        from weakground.registry import METHODS

        cls = METHODS.get(config.method.name)
        return from_dict(cls.config_class, config.method.params, f"method.params ({config.method.name})")

    def class_names(self, config: ExperimentConfig, progress: bool = False) -> list[str]:
        """The caption vocabulary, from the training captions (read here once; :meth:`load_data` reuses them).
        The object vocabulary is written into ``method.params.object_words``, so the saved config carries it."""
        from weakground.text.vocab import CaptionVocabulary, object_vocabulary

        self._data = self._read(config, progress)
        train = self._data.splits["train"]
        vocab = CaptionVocabulary.build((c for refs in train.references for c in refs), self._params(config).min_count)
        objects = object_vocabulary((t, cls) for caps in train.phrases for cap in caps for t, cls, _ in cap)
        config.method.params["object_words"] = {w: c for w, c in objects.items() if w in vocab.index}
        self._words = vocab.words
        return vocab.words

    def _read(self, config: ExperimentConfig, progress: bool) -> CaptioningData:
        from weakground.data.sources import dataset_spec, extra_test_splits

        spec = dataset_spec(config.data, progress)
        limits = {"val": max(1, config.data.n_val)}
        splits = {}
        for name in ["train", "val", "test", *extra_test_splits(config.data)]:
            splits[name] = _read_split(spec, name, config.data.image_size, limits.get(name), progress)
        return CaptioningData(spec, splits, [])

    def check_method(self, model: Any, config: ExperimentConfig) -> None:
        from weakground.methods import Captioner

        if not isinstance(model, Captioner):
            raise ConfigError(f"method {config.method.name!r} does not write captions: the captioning task trains "
                              f"ss_attention or updown")

    def load_data(self, config: ExperimentConfig, progress: bool) -> CaptioningData:
        from weakground.regions import RegionConfig
        from weakground.text.vocab import CaptionVocabulary

        if self._data is None:
            self.class_names(config, progress)
        params = self._params(config)
        region_config = RegionConfig(**params.regions)
        for name, split in self._data.splits.items():
            key = (self._data.spec, name, config.data.image_size, repr(region_config))
            split.regions = _proposals(split, region_config, progress, key)
        self._data.samples = _samples(params, config, self._data.splits["train"], CaptionVocabulary(self._words),
                                      progress)
        return self._data

    def report_header(self, config: ExperimentConfig, data: CaptioningData) -> dict[str, Any]:
        from weakground.regions import RegionConfig

        params = self._params(config)
        rc = RegionConfig(**params.regions)
        from weakground.text.tokens import tokenize

        train = data.splits["train"]
        truncated = sum(len(tokenize(t)) > params.max_len for refs in train.references for t in refs)
        return {"dataset": data.spec, "n_train_images": len(train.ids),
                "n_train_captions": len(data.samples),
                "input": {name: split.input_counts for name, split in data.splits.items()},
                "train_captions_cut_to_max_len": truncated,
                "regions": {"source": rc.source, "oracle": rc.source == "oracle", "max_regions": rc.max_regions,
                            "level": rc.level},
                "box_use": _box_use(params)}

    def batches(self, model: Any, config: ExperimentConfig, data: CaptioningData) -> tuple[Batches, int]:
        size = config.train.batch_size
        return (lambda rng: caption_batches(data, size, rng)), -(-len(data.samples) // size)

    def validate(self, config: ExperimentConfig, data: CaptioningData, device: torch.device
                 ) -> Callable[[Any], dict[str, float]]:
        def validate(m: Any) -> dict[str, float]:
            r = caption_report(m, data.splits["val"], beam=1, metrics=("BLEU", "CIDEr"))
            return {"cider": r["captions"]["CIDEr"], "bleu4": r["captions"]["BLEU-4"],
                    "f1_loc": r["grounding"]["f1_loc"]}

        return validate

    def test(self, model: Any, config: ExperimentConfig, data: CaptioningData, device: torch.device, run_dir: Path,
             progress: bool, figure: bool, report: dict[str, Any]) -> None:
        for name in [s for s in data.splits if s.startswith("test")]:
            report[name] = caption_report(model, data.splits[name], beam=model.config.beam)
            scores, f1 = report[name]["captions"], report[name]["grounding"]
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
                  + f", F1_all {f1['f1_all']:.3f}, F1_loc {f1['f1_loc']:.3f}")

    def print_summary(self, config: ExperimentConfig, report: dict[str, Any], out: Path) -> None:
        regions = report["regions"]
        print(f"\n{config.name}: {config.method.name} on {config.data.name}, regions from {regions['source']}"
              f"{' (ORACLE: ground-truth boxes)' if regions['oracle'] else ''}; report: {out / 'report.json'}")


def _box_use(params: Any) -> str:
    """Where ground-truth boxes enter training, in one line for the report."""
    if params.mu <= 0:
        return "none: no grounding loss"
    if params.grounding == "grounder":
        return f"none: L_gnd targets from the grounder {params.grounder_checkpoint}"
    return "L_gnd only: sigma from the ground-truth boxes of the entities each caption mentions"


def evaluate_captioner(model: Any, config: ExperimentConfig, split: str = "test", max_images: int | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """``weakground eval --checkpoint CAPTIONER``: read ``split`` of the checkpoint's own dataset, propose and
    encode its regions as training did, and score :func:`caption_report` with the checkpoint's beam."""
    from weakground.data.sources import dataset_spec

    spec = dataset_spec(config.data, progress)
    data = _read_split(spec, split, config.data.image_size, max_images, progress)
    data.regions = _proposals(data, model.region_config, progress)
    report = caption_report(model, data, beam=model.config.beam)
    source = model.region_config.source
    report.update({"beam": model.config.beam, "regions": {"source": source, "oracle": source == "oracle"}})
    return report
