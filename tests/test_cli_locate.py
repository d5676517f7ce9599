"""`weakground locate` end to end with the zero-training default method, and its one-line errors."""

import json

import pytest
from PIL import Image
from skimage import data

from weakground.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


def test_locate_writes_overlay_and_json(capsys, tmp_path, photo, bridge_model):
    out = tmp_path / "overlay.png"
    code, stdout, err = run(capsys, "locate", photo, "the cat", "chat café ☕", "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert [r["phrase"] for r in report["results"]] == ["the cat", "chat café ☕"]
    x, y = report["results"][0]["point"]
    assert 0 <= x < 451 and 0 <= y < 300 and report["results"][0]["boxes"]
    assert report["boxes"] == "instance" and report["results"][0]["found"] is True
    assert out.stat().st_size > 1000


def test_locate_prints_not_found_and_takes_a_box_kind(capsys, tmp_path, photo, bridge_model):
    code, stdout, err = run(capsys, "locate", photo, "the cat", "a red shirt", "--boxes", "threshold",
                            "--out", tmp_path / "o.png")
    assert code == 0, err
    cat, shirt = [line for line in stdout.splitlines() if line.startswith("  '")]
    assert "threshold box(es), presence" in cat and "NOT FOUND (presence" in shirt


def test_locate_folder_mode_reports_bad_files_and_keeps_going(capsys, tmp_path, photo, bridge_model):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(photo.read_bytes())
    (folder / "broken.png").write_bytes(photo.read_bytes()[:300])  # truncated
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("a cat\n\nwhiskers\n", encoding="utf-8")
    code, stdout, err = run(capsys, "locate", "--folder", folder, "--phrases", phrases, "--out", tmp_path / "out")
    assert code == 2
    assert err.count("\n") == 1 and "broken.png" in err
    assert (tmp_path / "out" / "cat.png").is_file() and not (tmp_path / "out" / "broken.png").exists()
    assert "'whiskers'" in stdout


@pytest.mark.parametrize("make_args, message", [
    (lambda p, t: [t / "missing.jpg", "a cat"], "not found"),
    (lambda p, t: [p, "   "], "phrase 1 is empty"),
    (lambda p, t: [p, "x" * 10_000], "10,000 characters"),
    (lambda p, t: [p], "no phrase"),
    (lambda p, t: [p, "a cat", "--method", "mcb_attention"], "must be trained first"),
    (lambda p, t: [p, "a cat", "--method", "nope"], "unknown method"),
    (lambda p, t: [p, "the", "a cat"], "no word that names something"),
    (lambda p, t: [p, "a cat", "--boxes", "instance", "--threshold", "0.3"], "applies to threshold boxes"),
])
def test_locate_bad_input_is_one_line_exit_2(capsys, tmp_path, photo, make_args, message):
    code, _, err = run(capsys, "locate", *make_args(photo, tmp_path), "--out", tmp_path / "o.png")
    assert code == 2
    assert err.startswith("weakground: error:") and err.count("\n") == 1 and message in err


def test_locate_truncated_image_is_exit_2(capsys, tmp_path, photo, bridge_model):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(photo.read_bytes()[:500])
    code, _, err = run(capsys, "locate", bad, "a cat", "--out", tmp_path / "o.png")
    assert code == 2 and "cut.jpg" in err and err.count("\n") == 1


def test_training_bridge_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--set", "method.name=bridge", "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and "needs no training" in err and not (tmp_path / "run").exists()
