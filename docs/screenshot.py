"""Take the README's screenshot: `flowerpipe serve` on a real model, a real photo classified.

    uv run python docs/screenshot.py MODEL.onnx PHOTO OUT.png

It starts `flowerpipe serve MODEL.onnx` on a free loopback port, opens the page in headless
Chromium through Playwright (the system's /usr/bin/chromium; Playwright downloads no browser),
picks PHOTO in the page's file input as tests/deploy/test_serve.py does, waits for the answer, and saves
a PNG of the whole page, 800 px wide. Needs `chromium` (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WIDTH = 800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an ONNX file exported by the pipeline")
    parser.add_argument("photo", type=Path, help="the photo to classify")
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flowerpipe.cli", "serve", str(args.model), "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": WIDTH, "height": 200})
            for _ in range(600):  # the server loads the model first
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    if server.poll() is not None:
                        sys.exit(f"flowerpipe serve stopped (exit status {server.returncode})")
                    time.sleep(0.1)
            page.wait_for_selector("body[data-state=ready]")
            page.set_input_files("#file", str(args.photo))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            page.wait_for_function("document.getElementById('preview').complete")
            print(f"{args.photo}: {page.text_content('#label')}")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
