"""Malformed values in COCO, ReferIt, Visual Genome and Flickr30K Entities files become recorded problems or
one-line WeakgroundErrors, and no file name leads a reader outside the dataset folder.

Hand-written cases for each defect found by fuzzing (issue 30), then the seeded fuzzer of :mod:`reader_fuzzer`
over every format's fixture (``benchmarks/reliability_fuzz.py`` runs the same engine on other seeds, at scale).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from reader_fuzzer import FORMATS, copy_fixture, fuzz, run_one

from weakground.data.coco import read_coco
from weakground.data.flickr30k_entities import read_flickr30k_entities
from weakground.data.referit import read_referit
from weakground.data.visual_genome import read_visual_genome
from weakground.errors import WeakgroundError

FIXTURES = Path(__file__).parent / "fixtures"
CAPTIONS = "annotations/captions_val2017.json"


def _copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../../x", "x" * 300])
def test_coco_unsafe_file_names_are_problems(tmp_path, file_name):
    root = _copy(tmp_path, "coco")
    _edit(root / CAPTIONS, lambda d: d["images"][0].update(file_name=file_name))
    reasons = [p.reason for p in read_coco(root, "val").problems]
    assert "unsafe image file name" in reasons


@pytest.mark.parametrize("width", ["1e999", "1e12", "1e30", "-1", "0", "\"abc\"", "[]", "NaN", "9" * 400])
def test_coco_bad_image_sizes_are_problems(tmp_path, width):
    root = _copy(tmp_path, "coco")
    _edit(root / CAPTIONS, lambda d: d["images"][0].update(width="@W@"))
    path = root / CAPTIONS
    path.write_text(path.read_text().replace('"@W@"', width))
    result = read_coco(root, "val")
    assert any(p.reason == "malformed image entry" and "images[0]" in p.detail for p in result.problems)


def test_coco_wrong_type_categories_is_one_line_error(tmp_path):
    root = _copy(tmp_path, "coco")
    _edit(root / "annotations/instances_val2017.json", lambda d: d.update(categories=5))
    with pytest.raises(WeakgroundError, match=r"instances_val2017\.json"):
        read_coco(root, "val")


def test_referit_wrong_type_split_and_categories(tmp_path):
    root = _copy(tmp_path, "referit")
    _edit(root / "refclef/refs.json", lambda d: d[0].update(split=[1]))
    _edit(root / "refclef/instances.json", lambda d: d.update(categories=5))
    result = read_referit(root, "test")
    assert "malformed categories" in [p.reason for p in result.problems]


def test_visual_genome_long_or_escaping_ids(tmp_path):
    root = _copy(tmp_path, "visual_genome")
    def change(d):
        d[0]["id"] = "../../x"
        d[1]["id"] = "y" * 300
    _edit(root / "region_descriptions.json", change)
    result = read_visual_genome(root, "all")
    assert [p.reason for p in result.problems].count("unsafe image file name") == 2


def test_integer_sizes_too_big_for_a_float_are_problems(tmp_path):
    # image_size called math.isfinite on a 400-digit int: OverflowError (COCO, ReferIt and Visual Genome sizes)
    root = _copy(tmp_path, "referit")
    _edit(root / "refclef/instances.json", lambda d: d["images"][0].update(width="@W@"))
    path = root / "refclef/instances.json"
    path.write_text(path.read_text().replace('"@W@"', "9" * 400))
    result = read_referit(root, "test")
    assert any(p.reason == "malformed image entry" and "outside" in p.detail for p in result.problems)
    root = _copy(tmp_path, "visual_genome")
    path = root / "image_data.json"
    path.write_text(path.read_text().replace('"width": 40', '"width": ' + "9" * 400))
    reasons = [p.reason for p in read_visual_genome(root, "all").problems]
    assert "invalid image size" in reasons


def test_flickr_huge_size_is_a_problem(tmp_path):
    # A 400-digit <width> was accepted, then overflowed converting to float when a box was checked against it.
    root = _copy(tmp_path, "flickr30k_entities")
    path = root / "Annotations/100.xml"
    text = path.read_text()
    start = text.index("<width>") + len("<width>")
    path.write_text(text[:start] + "9" * 400 + text[text.index("</width>"):])
    problems = read_flickr30k_entities(root, "test").problems
    assert any(p.reason == "missing or invalid <size>" and p.file.endswith("100.xml") for p in problems)


@pytest.mark.parametrize("image_id", ["s" * 300, "../../x", "/etc/passwd"])
def test_flickr_unsafe_split_ids_are_problems(tmp_path, image_id):
    # A 300-character id in test.txt raised OSError (file name too long); "../../x" read Sentences/../../x.txt.
    fmt = FORMATS["flickr30k_entities"]
    root, _ = copy_fixture(fmt, tmp_path)  # with decoy files where "../../x" leads
    (root / "test.txt").write_text(f"{image_id}\n100\n")
    outcome = run_one(fmt, root)
    assert outcome.kind == "problems" and not outcome.escapes
    result = read_flickr30k_entities(root, "test")
    assert "unsafe image file name" in [p.reason for p in result.problems]
    assert [r.image_id for r in result.records] == ["100"]


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_visual_genome_decompression_bomb_header_is_a_problem(tmp_path):
    # Image 3 has no size in image_data.json, so its header is read; PIL's DecompressionBombError escaped.
    root = _copy(tmp_path, "visual_genome")
    (root / "VG_100K/3.jpg").write_bytes(_png_header(100_000, 100_000))
    result = read_visual_genome(root, "all")
    assert any(p.reason == "unreadable image" and p.file.endswith("3.jpg") for p in result.problems)
    assert "3" not in [r.image_id for r in result.records]


# ------------------------------------------------------------------------------------------------- fuzzer

SEEDS = range(300)  # benchmarks/reliability_fuzz.py uses seeds from 100000, so the two never overlap


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fuzzed_files_never_crash(tmp_path, name):
    fmt = FORMATS[name]
    root, originals = copy_fixture(fmt, tmp_path)
    failures = [f"seed {seed} ({target}): {outcome.kind} {outcome.detail} escapes {outcome.escapes[:3]}"
                for seed, target, outcome in fuzz(fmt, root, originals, SEEDS)
                if outcome.kind == "crash" or outcome.escapes]
    assert not failures, f"{name}: {len(failures)} of {len(SEEDS)} mutations crashed or escaped:\n" + \
        "\n".join(failures[:10])
