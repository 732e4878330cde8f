"""The one small HTTP client of the demo, the benchmarks and the fault matrix (standard library
only: no requests/httpx at import).

* `request(method, url, body | raw, timeout_s) -> (status, text)`: any status comes back, an
  error status included (4xx/5xx are answers here, not exceptions); no answer at all (refused,
  reset, timed out) raises OSError.
* `post_json(url, body)` -> the decoded JSON answer; an error status raises
  urllib.error.HTTPError (for callers that only expect success).
* `post_status(url, raw)` -> the status only, 0 when nothing answered (load generators).
* `get_text(url)`, `ready(url)` (GET /readyz is 200).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

JSON = {"content-type": "application/json"}


def _json_request(method: str, url: str, body: Any = None, raw: bytes | None = None) -> urllib.request.Request:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return urllib.request.Request(url, data=data, method=method, headers=JSON)


def request(method: str, url: str, body: Any = None, raw: bytes | None = None,
            timeout_s: float = 30) -> tuple[int, str]:
    """`body` is sent as JSON, or `raw` as it is -> (HTTP status, response text)."""
    try:
        with urllib.request.urlopen(_json_request(method, url, body, raw), timeout=timeout_s) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def post_json(url: str, body: Any, timeout_s: float = 30) -> Any:
    """POST `body` as JSON -> the decoded JSON answer (an error status raises HTTPError)."""
    with urllib.request.urlopen(_json_request("POST", url, body), timeout=timeout_s) as resp:
        return json.loads(resp.read())


def post_status(url: str, raw: bytes, timeout_s: float = 30) -> int:
    """POST a JSON body -> HTTP status (0: no answer: refused, reset, timed out)."""
    try:
        return request("POST", url, raw=raw, timeout_s=timeout_s)[0]
    except OSError:
        return 0


def get_text(url: str, timeout_s: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.read().decode()


def ready(url: str, timeout_s: float = 2) -> bool:
    """GET `url`/readyz answers 200 (False on any other status or no answer)."""
    try:
        return request("GET", url + "/readyz", timeout_s=timeout_s)[0] == 200
    except OSError:
        return False
