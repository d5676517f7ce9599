"""``weakground serve`` in a subprocess, as a user starts it: used by the browser test, the server limits test
and ``benchmarks/reliability_server.py``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import weakground


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log: Path

    def memory_mb(self, field: str = "VmHWM") -> float:
        """The server's peak (``VmHWM``) or current (``VmRSS``) resident memory in MiB, from /proc (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field} not in /proc/{self.proc.pid}/status")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/api/health", timeout=5) as r:
            return json.load(r)


@contextlib.contextmanager
def running_server(args: list[str], log: Path, startup_s: float = 90.0) -> Iterator[ServerProcess]:
    """Start ``weakground serve ARGS`` on a free port, wait for /api/health, yield it; terminate it after."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(weakground.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "weakground", "serve", "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if server.health()["status"] == "ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"weakground serve did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def multipart(image: bytes, phrases: list[str], name: str = "photo.png", **fields: str) -> tuple[bytes, str]:
    """A multipart/form-data body for POST /api/locate, and its content type (stdlib only)."""
    boundary = "weakground-test-boundary"
    parts = [(b'Content-Disposition: form-data; name="image"; filename="' + name.encode() + b'"\r\n'
              b"Content-Type: application/octet-stream\r\n\r\n" + image)]
    for key, value in [("phrases", p) for p in phrases] + list(fields.items()):
        parts.append(f'Content-Disposition: form-data; name="{key}"\r\n\r\n{value}'.encode())
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def post_locate(url: str, image: bytes, phrases: list[str], timeout: float = 120.0, **fields: str
                ) -> tuple[int, dict]:
    """POST /api/locate; returns (status, JSON body) for success and error answers alike."""
    body, content_type = multipart(image, phrases, **fields)
    request = urllib.request.Request(url + "/api/locate", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
