"""Retrieval: exact vs FAISS search parity, re-ranking, gallery files, and `weakground retrieve`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from probe_method import CaptionProbe, ProbeConfig
from weakground.cli import main
from weakground.config import ExperimentConfig, from_dict
from weakground.engine.checkpoint import save_checkpoint
from weakground.engine.checkpoint import checkpoint_meta
from weakground.engine.retrieval import (Gallery, NearestImages, build_gallery, load_gallery, rank_captions,
                                         save_gallery, search_text)
from weakground.errors import WeakgroundError


def _probe():
    torch.manual_seed(0)
    config = from_dict(ExperimentConfig, {"name": "probe", "data": {"name": "scenes"},
                                          "backbone": {"in_channels": 3}, "method": {"name": "_caption_probe"}})
    return CaptionProbe(ProbeConfig(), config.backbone, []).eval(), config


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def checkpoint(tmp_path):
    model, config = _probe()
    path = tmp_path / "probe.safetensors"
    save_checkpoint(path, model, {**checkpoint_meta(config, []), "stage": "train"})
    return path


def test_faiss_search_agrees_with_exact_search():
    base = F.normalize(torch.randn(600, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    queries = F.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    exact, approx = NearestImages(base), NearestImages(base, faiss_from=1)
    assert not exact.uses_faiss and approx.uses_faiss
    (es, ei), (fs, fi) = exact.search(queries, 5), approx.search(queries, 5)
    assert ei.shape == fi.shape == (40, 5)
    naive = torch.tensor([sorted(range(600), key=lambda j: -float(base[j] @ q))[:5] for q in queries])
    assert torch.equal(ei, naive)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ei.tolist(), fi.tolist())])
    assert overlap >= 0.95  # HNSW is approximate, but at this size it should miss almost nothing
    assert torch.allclose(fs[fi == ei], es[fi == ei], atol=1e-5)


def test_k_larger_than_the_gallery_returns_every_image():
    scores, rows = NearestImages(torch.eye(3) * torch.tensor([1.0, 2.0, 3.0])).search(torch.ones(1, 3), 10)
    assert rows.tolist() == [[2, 1, 0]] and scores.tolist() == [[3.0, 2.0, 1.0]]


def test_gallery_embeds_readable_images_skips_the_rest_and_round_trips(folder, tmp_path):
    model, _ = _probe()
    paths = sorted(folder.iterdir())
    gallery, skipped = build_gallery(model, paths, "probe.safetensors")
    assert len(gallery.paths) == 6 and gallery.embeddings.shape == (6, 8)
    assert any("broken.jpg" in s for s in skipped) and any("notes.txt" in s for s in skipped)
    save_gallery(gallery, tmp_path / "g.safetensors")
    again = load_gallery(tmp_path / "g.safetensors")
    assert again.paths == gallery.paths and torch.equal(again.embeddings, gallery.embeddings)
    assert again.method == "_caption_probe"
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeakgroundError, match="bad.safetensors: not a weakground gallery"):
        load_gallery(tmp_path / "bad.safetensors")


def test_search_ranks_by_dot_product_and_rerank_with_the_same_score_keeps_the_order(folder):
    model, _ = _probe()
    gallery, _ = build_gallery(model, sorted(folder.glob("img*.png")), "probe")
    texts = ["a red circle", "two blue squares"]
    plain = search_text(model, gallery, texts, k=4)
    reranked = search_text(model, gallery, texts, k=4, rerank=6)
    expected = (model.encode_text(texts) @ gallery.embeddings.T).detach()
    for q in range(2):
        order = expected[q].argsort(descending=True)[:4].tolist()
        assert [gallery.paths.index(h["path"]) for h in plain[q]] == order
        assert [h["path"] for h in reranked[q]] == [h["path"] for h in plain[q]]
        assert [h["rank"] for h in plain[q]] == [1, 2, 3, 4]


def test_rank_captions_orders_by_the_exact_score():
    model, _ = _probe()
    image = torch.rand(1, 3, 32, 32)
    captions = ["a red circle", "a green star", "three purple nines"]
    ranked = rank_captions(model, image, captions, k=3)
    scores = model.scores(image, captions)[0].tolist()
    assert [r["caption"] for r in ranked] == [captions[i] for i in np.argsort(scores)[::-1]]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_retrieve_cli_text_to_image_and_image_to_text(capsys, folder, checkpoint, tmp_path):
    code, out, err = run(capsys, "retrieve", "--checkpoint", checkpoint, "--folder", folder, "--text", "a red circle",
                         "-k", "3", "--json", "--no-progress", "--save-gallery", tmp_path / "g.safetensors")
    assert code == 0, err
    result = json.loads(out)
    assert [h["rank"] for h in result["text_to_image"][0]["images"]] == [1, 2, 3]
    assert "broken.jpg" in err  # the unreadable file is reported, the rest indexed
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\na blue star\n", encoding="utf-8")
    code, out, err = run(capsys, "retrieve", "--checkpoint", checkpoint, "--gallery", tmp_path / "g.safetensors",
                         "--text", "a blue star", "--image", folder / "img0.png", "--captions", captions)
    assert code == 0, err
    assert "a blue star" in out and "img" in out


@pytest.mark.parametrize("argv, message", [
    (["--text", "x"], "exactly one of --folder"),
    (["--image", "{folder}/img0.png"], "both --image"),
    ([], "nothing to do"),
    (["--folder", "{folder}", "--text", ""], "--text 1 is empty"),
    (["-k", "0", "--text", "x", "--folder", "{folder}"], "-k must be >= 1"),
])
def test_retrieve_bad_input_is_one_line_exit_2(capsys, folder, checkpoint, argv, message):
    argv = [a.format(folder=folder) for a in argv]
    code, _, err = run(capsys, "retrieve", "--checkpoint", checkpoint, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_retrieve_refuses_a_checkpoint_without_a_joint_space(capsys, tmp_path, folder):
    from weakground.methods import create_method

    config = from_dict(ExperimentConfig, {"name": "mcb", "data": {"name": "multimnist"},
                                          "method": {"name": "mcb_attention"},
                                          "backbone": {"blocks": [1, 1, 1, 1], "widths": [8, 8, 8, 8]}})
    model = create_method("mcb_attention", config.backbone, [str(d) for d in range(10)], {})
    path = tmp_path / "mcb.safetensors"
    save_checkpoint(path, model, {**checkpoint_meta(config, [str(d) for d in range(10)]), "stage": "train"})
    code, _, err = run(capsys, "retrieve", "--checkpoint", path, "--folder", folder, "--text", "x")
    assert code == 2 and "no joint image-text space" in err


def test_gallery_of_another_method_is_refused(capsys, tmp_path, checkpoint):
    save_gallery(Gallery(["a.png"], torch.zeros(1, 8), "multilevel", "other.safetensors"), tmp_path / "g.safetensors")
    code, _, err = run(capsys, "retrieve", "--checkpoint", checkpoint, "--gallery", tmp_path / "g.safetensors",
                       "--text", "x")
    assert code == 2 and "embedded by method 'multilevel'" in err
