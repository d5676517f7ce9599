"""Malformed values in COCO, ReferIt and Visual Genome files become recorded problems or WeakgroundErrors.

Hand-written cases for each defect found by fuzzing (issue 30), then a seeded fuzzer over the fixtures.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from weakground.data.coco import read_coco
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


@pytest.mark.parametrize("width", ["1e999", "1e12", "1e30", "-1", "0", "\"abc\"", "[]"])
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


# ------------------------------------------------------------------------------------------------- fuzzer

_VALUES = [None, -1, 0, 1e308, "@INF@", "s" * 300, "../../x", "/etc/passwd", [], {}, "abc", True]


def _slots(node, out):
    """Every (container, key) holding a value, so one can be replaced or deleted."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


def _mutate(text: str, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return text[: rng.randrange(len(text))]
    data = json.loads(text)
    slots = _slots(data, [])
    if not slots:
        return text
    node, key = rng.choice(slots)
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = rng.choice(_VALUES)
    return json.dumps(data).replace('"@INF@"', "1e999")


FORMATS = {
    "coco": (lambda r: read_coco(r, "val"), [CAPTIONS, "annotations/instances_val2017.json"]),
    "referit": (lambda r: read_referit(r, "test"), ["refclef/refs.json", "refclef/instances.json"]),
    "visual_genome": (lambda r: read_visual_genome(r, "all"), ["region_descriptions.json", "image_data.json"]),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fuzzed_files_never_crash(tmp_path, name):
    read, files = FORMATS[name]
    root = _copy(tmp_path, name)
    originals = {f: (root / f).read_text() for f in files if (root / f).is_file()}
    for seed in range(150):
        rng = random.Random(seed)
        target = rng.choice(sorted(originals))
        (root / target).write_text(_mutate(originals[target], rng))
        try:
            read(root)
        except WeakgroundError:
            pass
        except Exception as exc:  # noqa: BLE001 - any other escape is the bug this test looks for
            pytest.fail(f"{name} seed {seed} ({target}): {type(exc).__name__}: {exc}")
        finally:
            (root / target).write_text(originals[target])
