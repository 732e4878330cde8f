"""The README's "tools' own commands", exactly as a newcomer types them.

README.md's block between ``<!-- used-by:begin`` and ``<!-- used-by:end -->`` is the list: every
line of it runs here with ``bash -c LINE`` from the root of a fresh copy of this checkout (its
tracked and not-ignored files, as a clone has them), in an environment with nothing
homefeed-specific: ``PATH`` (the venv first), a temporary ``HOME`` (BentoML's model store and
every tool's cache), and only for `bentoml serve` the test stack's Redis port and BentoML's own
address. Settings then come from the copy's homefeed.toml, as for a newcomer's clone. Each line
must match exactly one check below, and each check must match a line, so the README and this
test cannot drift apart.

At the end nothing new may sit in the copy outside .gitignore, and nothing new in the checkout
(but GX's git-ignored store id, see the last test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from homefeed.events import action_names
from homefeed.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- used-by:begin", "<!-- used-by:end -->"
# What a check is for: a README line belongs to the first (only) pattern it matches.
KINDS = {
    "feast_apply": re.compile(r"^(cd feature_repo && feast apply|feast -c feature_repo apply)$"),
    "bentoml_serve": re.compile(r"^bentoml serve bento\.service:Ranking$"),
    "checkpoint_run": re.compile(r"^great_expectations checkpoint run action_events --data events\.parquet$"),
    "homefeed_help": re.compile(r"^homefeed --help$"),
}
# Paths the commands may leave in the copy (all git-ignored): the home and byte-code.
ALLOWED_NEW = re.compile(r"^(\.homefeed/|(.*/)?__pycache__/)")


def used_by_lines(readme: Path = ROOT / "README.md") -> list[str]:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END)
    block = text[text.index("\n", start) + 1:end]
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("```")]


def kinds_of(line: str) -> list[str]:
    return [kind for kind, pattern in KINDS.items() if pattern.match(line)]


LINES = used_by_lines()


def lines_of(kind: str) -> list[str]:
    return [line for line in LINES if kinds_of(line) == [kind]]


def test_every_readme_line_has_a_check_and_every_check_a_line():
    unchecked = [line for line in LINES if len(kinds_of(line)) != 1]
    assert not unchecked, f"README used-by lines with no check (or several) in {__file__}: {unchecked}"
    assert all(lines_of(kind) for kind in KINDS), f"checks without a README line: {KINDS}"
    assert len(lines_of("feast_apply")) == 2  # both forms


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def new_paths(status_before: str, status_after: str) -> list[str]:
    """Entries of `git status --porcelain --ignored` that the second listing adds."""
    return sorted(set(status_after.splitlines()) - set(status_before.splitlines()))


def untouched(entry: str) -> bool:
    return bool(re.search(r"(^|/)(__pycache__|\.pytest_cache)(/|$)", entry[3:]))


@pytest.fixture(scope="module")
def checkout_status():
    """The checkout's own status before the module: compared at its end."""
    try:
        return git("status", "--porcelain", "--ignored", cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the copy is made from `git ls-files`")


@pytest.fixture(scope="module")
def clone(checkout_status, tmp_path_factory):
    """A fresh copy of the checkout (tracked and untracked-but-not-ignored files), with a git
    index of its own, so `git status` shows what the commands add."""
    copy = tmp_path_factory.mktemp("used-by") / "homefeed"
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a deleted, not yet staged file is still listed
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    git("init", "-q", cwd=copy)
    git("add", "-A", cwd=copy)
    return copy


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("user-home")


def plain_env(home: Path, **extra: str) -> dict[str, str]:
    """A newcomer's shell: the venv on PATH, a HOME, nothing else (plus `extra`)."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.defpath])
    return {"PATH": path, "HOME": str(home), **extra}


def run_line(line: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def homefeed_setting(expression: str, cwd: Path, env: dict[str, str]) -> str:
    """What `homefeed` itself resolves in that directory and environment."""
    code = f"from homefeed.settings import load_settings; s = load_settings(); print({expression})"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def applied(clone, home):
    """Every `feast apply` line, in README order; the registry they wrote."""
    env = plain_env(home)
    results = {line: run_line(line, clone, env) for line in lines_of("feast_apply")}
    return results, Path(homefeed_setting("s.feast_registry_path", clone, env))


@pytest.mark.parametrize("line", lines_of("feast_apply"))
def test_feast_apply_as_typed_writes_homefeeds_registry(applied, clone, line):
    results, registry = applied
    result = results[line]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    # the home every `homefeed` command run there uses: the copy's homefeed.toml says .homefeed
    assert registry == clone / ".homefeed" / "feast" / "registry.db" and registry.is_file()
    assert (clone / ".homefeed" / "offline" / "user_action_sequence").is_dir()  # batch sources: same home
    assert not list(clone.glob("feature_repo/$*")), "a literal ${VAR} directory in the feature repo"


@pytest.mark.parametrize("where, env", [
    ("checkout", {}),                                                # homefeed.toml: .homefeed/
    ("elsewhere", {}),                                               # no homefeed.toml: ./.homefeed
    ("elsewhere", {"HOMEFEED_HOME": "{tmp}/home"}),
    ("checkout", {"HOMEFEED_FEAST_REGISTRY": "sqlite:///{tmp}/registry.sqlite"}),
])
def test_feast_takes_the_registry_homefeed_settings_name(where, env, tmp_path, monkeypatch):
    """feature_store.yaml's `registry_type: homefeed`, read the way the `feast` command reads it,
    gives the registry that `homefeed` resolves in the same directory and environment."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    from homefeed.settings import load_settings

    for name in ("HOMEFEED_HOME", "HOMEFEED_FEAST_REGISTRY", "HOMEFEED_CONFIG", "HOMEFEED_FEATURE_REPO"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    monkeypatch.chdir(ROOT if where == "checkout" else tmp_path)
    repo = ROOT / "feature_repo"
    registry = load_repo_config(repo, repo / "feature_store.yaml").registry
    settings = load_settings()
    if settings.feast_registry:
        assert (registry.registry_type, registry.path) == ("sql", settings.feast_registry)
        assert type(FeatureStore(repo_path=str(repo)).registry).__name__ == "SqlRegistry"
    else:
        assert (registry.registry_type, registry.path) == ("file", str(settings.feast_registry_path))
        expected = {"checkout": ROOT / ".homefeed", "elsewhere": tmp_path / (
            "home" if env else ".homefeed")}[where]
        assert settings.home == expected


def test_registry_type_homefeed_takes_no_other_keys():
    from pydantic import ValidationError

    from homefeed.feature_store import HomefeedRegistryConfig

    with pytest.raises(ValidationError, match="takes its registry from homefeed settings.*path"):
        HomefeedRegistryConfig(registry_type="homefeed", path="data/registry.db")


def http(method: str, url: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def server(applied, clone, home, stack, tmp_path_factory):
    """The `bentoml serve` line, started (the model a user would have exported is in the BentoML
    store under the plain HOME; Redis is the test stack's). Tests that run while it starts
    request it too, so that its start-up overlaps them."""
    from homefeed.training.export import export_untrained

    (line,) = lines_of("bentoml_serve")
    tmp = tmp_path_factory.mktemp("bentoml-serve")
    export_untrained(tmp / "run", bentoml_home=home / "bentoml")
    port = free_port()
    env = plain_env(home, HOMEFEED_REDIS_PORT=str(stack.redis_port), BENTOML_PORT=str(port),
                    BENTOML_HOST="127.0.0.1")
    log_path = tmp / "serve.log"
    cpus = sorted(os.sched_getaffinity(0))[:2]  # the service starts a worker per CPU: two at most
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", line], cwd=clone, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    try:
        yield {"proc": proc, "url": f"http://127.0.0.1:{port}", "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def events(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    return pd.DataFrame({
        "event_id": [f"e-{i:06d}" for i in range(n)],
        "user_id": rng.integers(1, 1000, n, dtype=np.int64),
        "pin_id": rng.integers(1, 10**6, n, dtype=np.int64),
        "action_type": [action_names()[i % 3] for i in range(n)],
        "event_time": now - rng.integers(60_000, 600_000, n, dtype=np.int64),
        "surface": "homefeed",
    })


@pytest.mark.parametrize("line", lines_of("checkpoint_run"))
def test_checkpoint_run_as_typed_exits_0_on_good_and_1_on_bad_events(clone, home, server, line):
    data = clone / "events.parquet"  # the file the README line names, in the directory it runs in
    bad = events()
    bad.loc[3, "action_type"] = "like"
    try:
        for frame, code, verdict in ((events(), 0, "Validation succeeded!"), (bad, 1, "Validation failed!")):
            frame.to_parquet(data)
            result = run_line(line, clone, plain_env(home))
            assert result.returncode == code, result.stdout[-2000:] + result.stderr[-4000:]
            assert verdict in result.stdout, result.stdout[-2000:]
        assert "[unknown_action]" in result.stdout
    finally:
        data.unlink(missing_ok=True)  # the test's input, not the command's output


@pytest.mark.parametrize("line", lines_of("homefeed_help"))
def test_homefeed_help_as_typed(clone, home, line):
    result = run_line(line, clone, plain_env(home))
    assert result.returncode == 0 and result.stdout.startswith("usage: homefeed"), result.stderr


def test_feast_plan_in_the_feature_repo_reads_the_same_registry(applied, clone, home, server):
    result = run_line("cd feature_repo && feast plan", clone, plain_env(home))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "No changes to registry" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("line", lines_of("bentoml_serve"))
def test_bentoml_serve_as_typed_answers_rank_without_library_warnings(server, line):
    proc, url, log_path = server["proc"], server["url"], server["log"]
    deadline, ready = time.monotonic() + 240, False
    while not ready and time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = http("GET", url + "/readyz")[0] == 200
        except OSError:
            time.sleep(0.5)
    assert ready, log_path.read_text(errors="replace")[-4000:]
    for _ in range(2):  # a library's warning would come with the first request
        status, body = http("POST", url + "/rank", {"user_id": 17, "candidates": [1, 2, 3], "k": 2})
        assert status == 200, (status, body, log_path.read_text(errors="replace")[-4000:])
        assert len(json.loads(body)["items"]) == 2
    time.sleep(0.5)  # the worker's log lines of the request
    log_text = log_path.read_text(errors="replace")
    assert "path=/rank" in log_text and "status=200" in log_text, log_text[-4000:]
    # Python's warning format, "file.py:123: SomeWarning: message": none in the serving log
    assert not re.search(r"^\S+\.py:\d+: \w+: ", log_text, re.M), log_text[-4000:]


def test_nothing_new_outside_gitignore(clone, checkout_status):
    """Last in this module: what the commands above left behind. In the copy only git-ignored
    paths: the home (.homefeed/) and byte-code. In the checkout nothing, but GX's store id file
    (validation/gx/uncommitted/, git-ignored): `great_expectations` opens the GX project of the
    installed source (this checkout's validation/), and GX writes that file when it opens it."""
    status = git("status", "--porcelain", "--ignored", "--untracked-files=all", cwd=clone)
    left = [entry for entry in status.splitlines() if not entry.startswith("A  ")]
    assert all(entry.startswith("!! ") and ALLOWED_NEW.match(entry[3:]) for entry in left), left
    after = git("status", "--porcelain", "--ignored", cwd=ROOT)
    added = [e for e in new_paths(checkout_status, after) if not untouched(e)]
    assert added in ([], ["!! validation/gx/uncommitted/"]), f"new in the checkout: {added}"
