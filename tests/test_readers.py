"""Dataset readers: hand-written fixtures in the real layouts, read into exactly the expected records.

Every expected number below is worked out by hand from the fixture files (see the comments): Flickr30K
Entities boxes are 1-based inclusive, so ``<xmin>3</xmin><xmax>8</xmax>`` is ``x1=2, x2=8``; COCO/VG/ReferIt
boxes are ``[x, y, w, h]``, so ``[5, 6, 20, 10]`` is ``(5, 6, 25, 16)``.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from weakground.data.coco import read_coco, write_coco_captions
from weakground.data.flickr30k_entities import parse_sentence, read_flickr30k_entities, write_flickr30k_entities
from weakground.data.readers import check_dataset, format_check_report, read_dataset
from weakground.data.referit import read_referit
from weakground.data.types import Box, Caption, ImageRecord, Phrase, Problem, ReadResult
from weakground.data.visual_genome import read_visual_genome
from weakground.errors import WeakgroundError

FIXTURES = Path(__file__).parent / "fixtures"
FLICKR = FIXTURES / "flickr30k_entities"
FLICKR_BROKEN = FIXTURES / "flickr30k_entities_broken"
COCO = FIXTURES / "coco"
REFERIT = FIXTURES / "referit"
VG = FIXTURES / "visual_genome"


def problems(result: ReadResult, root: Path) -> list[tuple[str, int | None, str]]:
    """Problems as (path relative to the dataset root, line, reason)."""
    return [(Path(p.file).relative_to(root).as_posix(), p.line, p.reason) for p in result.problems]


def without_paths(records: list[ImageRecord]) -> list[ImageRecord]:
    return [ImageRecord(r.image_id, None, r.width, r.height, r.captions, r.objects) for r in records]


# ----------------------------------------------------------------------------------------------------- types


def test_box_conventions():
    # Pixel columns 3..5 and rows 0..1: exclusive right/bottom edges.
    box = Box(3, 0, 6, 2)
    assert (box.width, box.height, box.area) == (3, 2, 6)
    assert box.as_list() == [3, 0, 6, 2]
    # VOC 1-based inclusive: the full width of a 333-pixel image is <xmin>1</xmin> .. <xmax>333</xmax>.
    assert Box.from_voc_1based(1, 1, 333, 500) == Box(0, 0, 333, 500)
    assert Box.from_voc_1based(4, 1, 6, 2) == box
    assert box.to_voc_1based() == (4, 1, 6, 2)
    assert Box.from_xywh(5, 6, 20, 10) == Box(5, 6, 25, 16)
    assert Box.from_xywh(5, 6, 20, 10).as_xywh() == [5, 6, 20, 10]
    assert Box(-2, 5, 12, 40).clip(10, 30) == Box(0, 5, 10, 30)
    assert Box(5, 5, 2, 9).area == 0


def test_problem_formatting_and_summary():
    a = Problem("x/Sentences/1.txt", 3, "empty caption")
    b = Problem("x/refs.json", None, "unknown annotation id", "refs[4]")
    assert str(a) == "x/Sentences/1.txt:3: empty caption"
    assert str(b) == "x/refs.json: unknown annotation id (refs[4])"
    result = ReadResult([], [a, b, a])
    assert result.summary() == {"empty caption": 2, "unknown annotation id": 1}


# ----------------------------------------------------------------------------------------- Flickr30K Entities


def test_parse_sentence_strips_markup_and_indexes_words():
    words, phrases = parse_sentence("A [/EN#18/people man] in [/EN#19/clothing a red shirt] .")
    assert words == ["A", "man", "in", "a", "red", "shirt", "."]
    assert phrases == [("18", ["people"], "man", 1), ("19", ["clothing"], "a red shirt", 3)]
    assert parse_sentence("[/EN#5/people/other The performer] bows .")[1] == [("5", ["people", "other"],
                                                                                "The performer", 0)]


MAN = Box(0, 0, 10, 20)  # <object> named 1 *and* 5: <bndbox> 1,1,10,20 -> x1 = 1-1, x2 = 10
SHIRT = Box(2, 4, 8, 12)  # 3,5,8,12
CUPS = [Box(20, 10, 25, 15), Box(29, 10, 40, 16)]  # two objects named 3; the second, 30..45 on a 40-wide image, clipped
DOG = Box(4, 4, 20, 25)  # 5,5,20,25; its second box (60..70) lies outside the 50-wide image
POST = Box(49, 39, 50, 40)  # 50,40,50,40: a single pixel in the bottom-right corner

FLICKR_TEST = [
    ImageRecord("100", FLICKR / "Images" / "100.jpg", 40, 30, [
        Caption("A man in a red shirt holds two cups .", [
            Phrase("man", [MAN], ["people"], "1", 1),
            Phrase("a red shirt", [SHIRT], ["clothing"], "2", 3),
            Phrase("two cups", CUPS, ["other"], "3", 7),
        ]),
        # EN#4 (<scene>1</scene>) and EN#6 (<nobndbox>1</nobndbox>) are left out; EN#5 shares EN#1's object.
        Caption("The performer stands on the stage beside a hidden friend .", [
            Phrase("The performer", [MAN], ["people", "other"], "5", 0),
        ]),
        # line 3 is empty; line 4's EN#99 has no <object>.
        Caption("A guy drinks from cups near a lamp .", [
            Phrase("A guy", [MAN], ["people"], "1", 0),
            Phrase("cups", CUPS, ["other"], "3", 4),
        ]),
    ]),
    ImageRecord("200", FLICKR / "Images" / "200.jpg", 50, 40, [
        Caption("A dog chases a ball .", [Phrase("A dog", [DOG], ["animals"], "10", 0)]),  # EN#11: degenerate box
        Caption("The dog runs past a post in no time .", [
            Phrase("The dog", [DOG], ["animals"], "10", 0),
            Phrase("a post", [POST], ["other"], "12", 4),
        ]),
    ]),
]

FLICKR_TEST_PROBLEMS = [
    ("Annotations/100.xml", 38, "box partly outside the image (clipped)"),
    ("Sentences/100.txt", 2, "entity has no box (scene)"),
    ("Sentences/100.txt", 2, "entity has no box (nobndbox)"),
    ("Sentences/100.txt", 3, "empty caption"),
    ("Sentences/100.txt", 4, "unknown entity id"),
    ("Annotations/200.xml", 19, "box entirely outside the image"),
    ("Annotations/200.xml", 28, "degenerate box"),
    ("Sentences/200.txt", 1, "entity's boxes were all invalid"),
    ("Sentences/200.txt", 2, "not-visual entity"),
]


def test_flickr_test_split_exact_records_and_problems():
    result = read_flickr30k_entities(FLICKR, "test")
    assert result.records == FLICKR_TEST
    assert problems(result, FLICKR) == FLICKR_TEST_PROBLEMS
    assert [p.by_design for p in result.problems] == [False, True, True, False, False, False, False, False, True]
    assert result.problems[4].detail == "EN#99 'a lamp' is not in 100.xml"


def test_flickr_train_split_is_clean_and_passes_strict():
    result = read_flickr30k_entities(FLICKR, "train", strict=True)
    assert result.problems == []
    assert result.records == [ImageRecord("300", FLICKR / "Images" / "300.jpg", 30, 30, [
        Caption("A child sits .", [Phrase("A child", [Box(1, 1, 15, 28)], ["people"], "20", 0)]),
        Caption("The kid waves to a woman .", [
            Phrase("The kid", [Box(1, 1, 15, 28)], ["people", "other"], "20", 0),
            Phrase("a woman", [Box(15, 2, 30, 30)], ["people"], "21", 4),
        ]),
    ])]
    assert read_flickr30k_entities(FLICKR, "val").records == []  # an empty split file is a valid, empty split


def test_flickr_strict_raises_on_first_problem_with_file_and_line():
    with pytest.raises(WeakgroundError, match=r"Annotations/100\.xml:38: box partly outside the image \(clipped\)"):
        read_flickr30k_entities(FLICKR, "test", strict=True)


def test_flickr_broken_variant_skips_and_counts_everything():
    result = read_dataset(f"flickr30k_entities:{FLICKR_BROKEN}", "test")
    assert problems(result, FLICKR_BROKEN) == [
        ("Annotations/400.xml", 8, "malformed XML"),
        ("Annotations/500.xml", None, "annotation file missing"),
        ("Annotations/600.xml", 16, "object without <name>"),
        ("Annotations/600.xml", 24, "object has neither <bndbox> nor a nobndbox/scene flag"),
        ("Annotations/600.xml", 30, "malformed <bndbox>"),
        ("Sentences/600.txt", 1, "malformed entity markup"),
        ("Sentences/600.txt", 2, "entity's boxes were all invalid"),
        ("Sentences/600.txt", 2, "entity's boxes were all invalid"),
        ("Images/700.jpg", None, "image file missing"),
        ("Annotations/800.xml", 3, "XML with entity declarations refused"),
        ("Annotations/900.xml", 1, "missing or invalid <size>"),
        ("test.txt", 7, "duplicate image id"),
    ]
    assert result.records == [ImageRecord("600", FLICKR_BROKEN / "Images" / "600.jpg", 20, 20, [
        Caption("A man walks past a sign and a car .", [Phrase("A man", [Box(0, 0, 20, 20)], ["people"], "1", 0)]),
    ])]
    with pytest.raises(WeakgroundError, match=r"Annotations/400\.xml:8: malformed XML \(mismatched tag\)"):
        read_flickr30k_entities(FLICKR_BROKEN, "test", strict=True)


def test_flickr_without_image_check_keeps_images_whose_file_is_missing():
    result = read_flickr30k_entities(FLICKR_BROKEN, "test", check_images=False)
    assert [r.image_id for r in result.records] == ["600", "700"]
    assert "image file missing" not in result.summary()


def test_flickr_fatal_errors_name_the_file():
    with pytest.raises(WeakgroundError, match=r"nosuch\.txt: split file not found"):
        read_flickr30k_entities(FLICKR, "nosuch")
    with pytest.raises(WeakgroundError, match="Flickr30K Entities root not found"):
        read_flickr30k_entities(FIXTURES / "missing", "test")


def test_flickr_round_trip(tmp_path):
    original = read_flickr30k_entities(FLICKR, "all")
    assert [r.image_id for r in original.records] == ["100", "200", "300"]
    write_flickr30k_entities(original.records, tmp_path, {"test": ["100", "200"], "train": ["300"], "val": []})
    again = read_flickr30k_entities(tmp_path, "all", strict=True)
    assert again.problems == []
    assert without_paths(again.records) == without_paths(original.records)
    assert [r.path for r in again.records] == [tmp_path / "Images" / f"{i}.jpg" for i in ("100", "200", "300")]
    assert [r.image_id for r in read_flickr30k_entities(tmp_path, "test").records] == ["100", "200"]
    # The written markup is the real format: caption line 1 comes back as it is in the fixture.
    assert (tmp_path / "Sentences" / "100.txt").read_text().splitlines()[0] == \
        (FLICKR / "Sentences" / "100.txt").read_text().splitlines()[0]
    assert "<xmax>40</xmax>" in (tmp_path / "Annotations" / "100.xml").read_text()  # the clipped box


def test_flickr_writer_marks_boxless_entities_nobndbox(tmp_path):
    record = ImageRecord("7", None, 20, 10, [Caption("a cat and a hat", [
        Phrase("a cat", [Box(0, 0, 5, 5)], ["animals"], "1", 0),
        Phrase("a hat", [], ["clothing"], "2", 3),
    ])])
    write_flickr30k_entities([record], tmp_path, {"test": ["7"]})
    assert (tmp_path / "Sentences" / "7.txt").read_text() == "[/EN#1/animals a cat] and [/EN#2/clothing a hat]\n"
    result = read_flickr30k_entities(tmp_path, "test", strict=True, check_images=False)  # by design: no raise
    assert result.records[0].captions[0].phrases == [record.captions[0].phrases[0]]
    assert [(p.reason, p.by_design) for p in result.problems] == [("entity has no box (nobndbox)", True)]


def test_flickr_writer_rejects_records_the_format_cannot_hold(tmp_path):
    bad = ImageRecord("7", None, 20, 10, [Caption("a cat", [Phrase("a dog", [Box(0, 0, 5, 5)], ["animals"], "1", 0)])])
    with pytest.raises(ValueError, match="does not match caption"):
        write_flickr30k_entities([bad], tmp_path, {})


# ------------------------------------------------------------------------------------------------------ COCO


COCO_VAL = [
    ImageRecord("42", COCO / "val2017" / "000000000042.jpg", 40, 30,
                [Caption("A cat sits on a mat."), Caption("A grey cat resting.")],  # whitespace collapsed
                [Phrase("bird", [Box(30, 2, 35.5, 6)], ["bird"], "16"),  # categories sorted by id
                 Phrase("cat", [Box(5, 6, 25, 16)], ["cat"], "17")]),
    ImageRecord("73", COCO / "val2017" / "000000000073.jpg", 32, 32,
                [Caption("Two birds on a wire.")],
                [Phrase("bird", [Box(2, 3, 6, 8), Box(25, 20, 32, 28)], ["bird"], "16")]),  # 25+10 clipped to 32
]


def test_coco_exact_records_and_problems():
    result = read_coco(COCO, "val")  # "val" finds captions_val2017.json
    assert result.records == COCO_VAL
    assert [(Path(p.file).name, p.line, p.reason, p.detail) for p in result.problems] == [
        ("000000000099.jpg", None, "image file missing", "images[2]: id 99"),
        ("captions_val2017.json", None, "empty caption", "annotations[3]: id 4"),
        ("captions_val2017.json", None, "caption for unknown image id", "annotations[4]: image_id 555"),
        ("instances_val2017.json", None, "box partly outside the image (clipped)",
         "annotations[2] (id 103), box [25, 20, 35, 28] -> [25, 20, 32, 28] on a 32x32 image"),
        ("instances_val2017.json", None, "box entirely outside the image",
         "annotations[3] (id 104), box [40, 40, 45, 45] on a 32x32 image"),
        ("instances_val2017.json", None, "unknown category id", "annotations[4] (id 105): category_id 3"),
        ("instances_val2017.json", None, "degenerate box", "annotations[5] (id 106), box [1, 1, 1, 6]"),
    ]
    assert read_coco(COCO, "all").records == COCO_VAL
    with pytest.raises(WeakgroundError, match=r"000000000099\.jpg: image file missing \(images\[2\]: id 99\)"):
        read_coco(COCO, "val2017", strict=True)
    with pytest.raises(WeakgroundError, match=r"captions_val2017\.json: empty caption \(annotations\[3\]: id 4\)"):
        read_coco(COCO, "val2017", strict=True, check_images=False)


def test_coco_unknown_split_lists_the_available_ones():
    with pytest.raises(WeakgroundError,
                       match=r"captions_train\.json: captions file not found; available splits: val2017"):
        read_coco(COCO, "train")


def test_coco_malformed_json_is_fatal_with_its_line(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val.json").write_text('{"images": [],\n "annotations": [\n  {oops}\n]}')
    with pytest.raises(WeakgroundError, match=r"captions_val\.json:3: malformed JSON"):
        read_coco(tmp_path, "val")


def test_coco_round_trip(tmp_path):
    original = read_coco(COCO, "val")
    write_coco_captions(original.records, tmp_path / "annotations" / "captions_val2017.json",
                        tmp_path / "annotations" / "instances_val2017.json", image_dir=tmp_path / "val2017")
    again = read_coco(tmp_path, "val2017", strict=True)
    assert again.problems == []
    assert without_paths(again.records) == without_paths(original.records)
    assert again.records[0].path == tmp_path / "val2017" / "000000000042.jpg"
    data = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    assert data["categories"] == [{"id": 16, "name": "bird", "supercategory": "bird"},
                                  {"id": 17, "name": "cat", "supercategory": "cat"}]
    assert data["annotations"][0]["bbox"] == [30, 2, 5.5, 4]


# --------------------------------------------------------------------------------------------------- ReferIt


def referit_phrase(text: str, box: Box, category: str, ann_id: str) -> Caption:
    return Caption(text, [Phrase(text, [box], [category], ann_id, 0)])


REFERIT_TEST = [
    ImageRecord("25", REFERIT / "images" / "saiapr_tc-12" / "25.jpg", 48, 36, [
        referit_phrase("man on the left", Box(10, 4, 22, 34), "man", "251"),  # [10, 4, 12, 30]
        referit_phrase("guy", Box(10, 4, 22, 34), "man", "251"),
        referit_phrase("sky", Box(0, 0, 48, 10), "sky", "252"),  # ref 2's second sentence is empty
    ]),
    ImageRecord("1000", REFERIT / "images" / "saiapr_tc-12" / "1000.jpg", 30, 20, [
        referit_phrase("left sky", Box(0, 0, 10, 5), "sky", "1001"),  # [-2, 0, 12, 5] clipped at x=0
    ]),
]

REFERIT_TEST_PROBLEMS = [
    ("refclef/refs.json", None, "empty caption"),
    ("refclef/instances.json", None, "box partly outside the image (clipped)"),
    ("refclef/instances.json", None, "box entirely outside the image"),
    ("refclef/refs.json", None, "referred object has no valid box"),
    ("refclef/refs.json", None, "unknown annotation id"),
    ("images/saiapr_tc-12/7.jpg", None, "image file missing"),
]


def test_referit_exact_records_and_problems():
    result = read_dataset(f"referit:{REFERIT}", "test")
    assert result.records == REFERIT_TEST
    assert problems(result, REFERIT) == REFERIT_TEST_PROBLEMS
    train = read_referit(REFERIT / "refclef", "train")  # PATH may also be refclef/ itself
    assert [p.reason for p in train.problems] == ["box partly outside the image (clipped)"]  # only ann 1001 is used
    assert train.records == [ImageRecord("1000", REFERIT / "images" / "saiapr_tc-12" / "1000.jpg",
                                         30, 20, [referit_phrase("blue sky", Box(0, 0, 10, 5), "sky", "1001")])]
    with pytest.raises(WeakgroundError, match=r"refs\.json: empty caption \(refs\[1\] \(ref_id 2\) sentence 1\)"):
        read_referit(REFERIT, "test", strict=True)
    with pytest.raises(WeakgroundError, match="no ref has split 'testB'; splits present: test, train"):
        read_referit(REFERIT, "testB")


def copy_referit_with_pickle(tmp_path: Path, payload: bytes) -> Path:
    root = tmp_path / "data"
    shutil.copytree(REFERIT, root)
    (root / "refclef" / "refs.json").unlink()
    (root / "refclef" / "refs(berkeley).p").write_bytes(payload)
    return root


def test_referit_reads_the_pickle_as_plain_data_only(tmp_path):
    refs = json.loads((REFERIT / "refclef" / "refs.json").read_text())
    root = copy_referit_with_pickle(tmp_path, pickle.dumps(refs, protocol=2))
    result = read_referit(root, "test")
    assert without_paths(result.records) == without_paths(REFERIT_TEST)
    assert len(result.problems) == len(REFERIT_TEST_PROBLEMS)


class _NotData:
    """Pickled by reference to its class: exactly what the data-only unpickler must refuse."""


def test_referit_refuses_a_pickle_that_names_a_global(tmp_path):
    root = copy_referit_with_pickle(tmp_path, pickle.dumps([_NotData()]))
    with pytest.raises(WeakgroundError, match=r"refs\(berkeley\)\.p: cannot read refs pickle safely"):
        read_referit(root, "test")


# --------------------------------------------------------------------------------------------- Visual Genome


def region(text: str, box: Box, region_id: str) -> Caption:
    return Caption(text, [Phrase(text, [box], [], region_id, 0)])


def test_visual_genome_exact_records_and_problems():
    result = read_visual_genome(VG, "test")
    assert result.records == [
        ImageRecord("1", VG / "VG_100K" / "1.jpg", 40, 30, [
            region("the clock is green", Box(3, 4, 13, 10), "11"),  # trailing space dropped
            region("a tall window", Box(30, 20, 40, 30), "13"),  # [30, 20, 15, 15] clipped to 40x30
        ]),
        ImageRecord("2", VG / "VG_100K_2" / "2.jpg", 24, 24, [region("white cloud", Box(0, 0, 24, 5), "21")]),
    ]
    assert [(p.reason, p.detail.split(" (")[0]) for p in result.problems] == [
        ("empty caption", "image 1 regions[1]"),
        ("box partly outside the image (clipped)", "image 1 regions[2]"),
        ("degenerate box", "image 2 regions[1]"),  # width -3
        ("malformed region", "image 2 regions[2]: needs phrase, x, y, width, height"),  # x = "left"
    ]
    # Image 3 is not in image_data.json: its size comes from the JPEG header.
    assert read_visual_genome(VG, "train", strict=True).records == [
        ImageRecord("3", VG / "VG_100K" / "3.jpg", 16, 12, [region("small cup", Box(1, 1, 5, 5), "31")])]
    assert [r.image_id for r in read_visual_genome(VG, "all").records] == ["1", "2", "3"]
    with pytest.raises(WeakgroundError, match="val.txt: split file not found; Visual Genome has no official split"):
        read_visual_genome(VG, "val")


# ------------------------------------------------------------------------------------------ spec and check


def test_read_dataset_rejects_bad_specs():
    with pytest.raises(WeakgroundError, match="expected FORMAT:PATH"):
        read_dataset(str(FLICKR))
    with pytest.raises(WeakgroundError, match="unknown format 'flickr'; known: coco, flickr30k_entities"):
        read_dataset(f"flickr:{FLICKR}")


def test_check_dataset_counts_and_report():
    report = check_dataset(f"flickr30k_entities:{FLICKR}")
    # 3 images; captions 3 + 2 + 2; phrases 6 + 3 + 3; boxes (1+1+2 + 1 + 1+2) + (1 + 1+1) + (1 + 1+1).
    assert {k: report[k] for k in ("images", "captions", "phrases", "boxes", "objects")} == \
        {"images": 3, "captions": 7, "phrases": 12, "boxes": 14, "objects": 0}
    assert (report["problem_count"], report["by_design_count"]) == (9, 3)
    assert report["problems"]["unknown entity id"] == {
        "count": 1, "example": f"{FLICKR / 'Sentences' / '100.txt'}:4",
        "detail": "EN#99 'a lamp' is not in 100.xml", "by_design": False}
    text = format_check_report(report)
    assert "problems: 9 (3 by design" in text
    example = re.escape(f"{FLICKR}/Sentences/100.txt:2")
    assert re.search(r"\n +1  entity has no box \(scene\) \[by design\] +e\.g\. " + example, text)

    coco = check_dataset(f"coco:{COCO}")
    assert {k: coco[k] for k in ("images", "captions", "phrases", "boxes", "objects")} == \
        {"images": 2, "captions": 3, "phrases": 0, "boxes": 4, "objects": 3}
    clean = format_check_report(check_dataset(f"flickr30k_entities:{FLICKR}", "train"))
    assert clean.endswith("problems: none")


def test_readers_never_import_torch():
    code = ("import sys; import weakground.data.readers, weakground.data.flickr30k_entities, weakground.data.coco, "
            "weakground.data.referit, weakground.data.visual_genome; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("split, ids", [("karpathy_train", ["200", "300"]), ("karpathy_test", ["100"]),
                                        ("karpathy_val", [])])
def test_flickr_karpathy_split_file(split, ids):
    result = read_flickr30k_entities(FLICKR, split)
    assert [r.image_id for r in result.records] == ids  # restval images are training images
    reasons = [p.reason for p in result.problems]
    assert "malformed Karpathy entry" in reasons  # images[4] has no .jpg file name
    assert ("sentence file missing" in reasons) == (split == "karpathy_val")  # 999 is listed but absent


def test_flickr_karpathy_bad_split_and_missing_file(tmp_path):
    with pytest.raises(WeakgroundError, match="unknown Karpathy split 'dev'"):
        read_flickr30k_entities(FLICKR, "karpathy_dev")
    shutil.copytree(FLICKR, tmp_path / "f", ignore=shutil.ignore_patterns("dataset_flickr30k.json"))
    with pytest.raises(WeakgroundError, match=r"dataset_flickr30k\.json: Karpathy split file not found"):
        read_flickr30k_entities(tmp_path / "f", "karpathy_test")
    (tmp_path / "f" / "dataset_flickr30k.json").write_text("[1, 2]")
    with pytest.raises(WeakgroundError, match=r"no \"images\" list"):
        read_flickr30k_entities(tmp_path / "f", "karpathy_test")
