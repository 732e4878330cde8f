"""`feast ui` on the applied feature repo serves its page and the project's registry (the
grpcio extras it imports are project dependencies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from homefeed.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_feast_ui_serves_its_page(feature_repo, tmp_path):
    feast = shutil.which("feast", path=os.path.dirname(os.sys.executable))
    port = free_port()
    log = open(tmp_path / "feast-ui.log", "w")
    ui = subprocess.Popen([feast, "-c", str(feature_repo), "ui", "--host", "127.0.0.1", "--port", str(port)],
                          stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # Feast's import alone takes ~15 s on a busy 2-core box
        page = None
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                status, page = _get(base + "/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert page is not None, (tmp_path / "feast-ui.log").read_text()[-3000:]
        assert status == 200 and page.lower().startswith(b"<!doctype html>") and b"feast" in page.lower()
        status, body = _get(base + "/projects-list.json")
        assert status == 200
        assert [p["id"] for p in json.loads(body)["projects"]] == ["homefeed"]
    finally:
        ui.terminate()
        ui.wait(timeout=30)
        log.close()
