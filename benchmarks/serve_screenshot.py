"""Regenerate docs/img/serve.png: the web app's page with a result, taken in Debian's chromium via Playwright.

Starts ``weakground serve`` on a free port (as a user would), uploads the bundled astronaut photo, grounds three
phrases, and saves the page. Needs /usr/bin/chromium and ``pip install playwright`` (no browser download).

    PYTHONPATH=src python benchmarks/serve_screenshot.py [--out docs/img/serve.png]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["the astronaut", "the flag", "a space shuttle"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "serve.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from weakground.data.demo_photos import demo_photo_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen([sys.executable, "-m", "weakground", "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise SystemExit("weakground serve did not come up")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(url + "/")
            page.set_input_files("#image", str(demo_photo_path("astronaut")))
            page.fill("#phrases", "\n".join(PHRASES))
            page.click("#submit")
            page.wait_for_selector("#results[data-state='done']", timeout=60_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            # 256 colours keep the committed PNG small; the page is flat colours plus three photos.
            from PIL import Image

            with Image.open(args.out) as shot:
                shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
