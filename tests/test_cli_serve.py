"""`weakground serve` argument checks (one line, exit 2, before anything heavy) and `locate --demo`."""

import json
import subprocess
import sys

import pytest

from weakground.cli import main


def test_help_imports_no_web_framework():
    probe = ("import sys; from weakground.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "weakground", "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--host", "--port", "--method", "--checkpoint", "--max-upload-mb", "--timeout-s", "--max-queue",
                 "--work-side"):
        assert flag in help_text


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port 70000: must lie in 0..65535"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0: must be > 0"),
    (["--timeout-s", "-1"], "--timeout-s -1: must be > 0"),
    (["--max-queue", "0"], "--max-queue 0: must be >= 1"),
    (["--work-side", "10"], "--work-side 10: must be >= 64 pixels"),
    (["--checkpoint", "missing.safetensors"], "checkpoint file not found"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "mcb_attention"], "must be trained first"),
])
def test_serve_bad_arguments_are_one_line(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_locate_demo_photo(capsys, tmp_path, bridge_model):
    out = tmp_path / "locate.png"
    assert main(["locate", "--demo", "chelsea", "the cat", "café table", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["phrase"] for r in report["results"]] == ["the cat", "café table"]
    assert report["image"].endswith("chelsea.png") and out.stat().st_size > 1000
    assert main(["locate", "--demo", "nope", "a cat"]) == 2
    assert "unknown demo photo 'nope'" in capsys.readouterr().err
    assert main(["locate", "--demo", "chelsea", "--folder", str(tmp_path), "a cat"]) == 2
    assert main(["locate", "--demo", "chelsea"]) == 2
    assert "no phrase" in capsys.readouterr().err
