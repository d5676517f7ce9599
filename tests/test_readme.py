"""The README's Python example runs as written (issue 28: the documented API must not rot)."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- tested: tests/test_readme.py -->"


def readme_example() -> str:
    """The first ```python block after the MARK comment."""
    text = README.read_text(encoding="utf-8")
    assert MARK in text, f"README.md lost its {MARK!r} marker"
    return text.split(MARK, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example must not depend on the working directory
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    # one printed line per phrase: the phrase, its (x, y) point, its peak and its best box
    assert [line.split(" (")[0] for line in lines] == ["the astronaut", "the flag"]
    results, maps, image = namespace["results"], namespace["maps"], namespace["images"]
    height, width = image.shape[-2:]
    for r in results:
        assert 0 <= r.point[0] < width and 0 <= r.point[1] < height and r.heatmap.shape == (height, width)
        assert r.boxes and all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for x1, y1, x2, y2 in r.boxes)
    assert maps.shape[:2] == (1, 1) and (maps >= 0).all()
