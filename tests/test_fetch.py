"""`homefeed world fetch`: archives made here, served by a real HTTP server on loopback; the
fetched folder goes straight into the importers.

The official URLs are not reachable from CI, so every fetch points at the local server
(`--url`, `--mirror`); the digests pinned for the official archives do not match the small
archives made here, which is what the mismatch tests use.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from test_kuairand import make_rows, write_features, write_log
from test_movielens import make_ratings, write_100k

from homefeed.cli import main
from homefeed.errors import UserError
from homefeed.stack import free_port
from homefeed.world import fetch as F


class Served:
    """A directory served over HTTP on 127.0.0.1, counting the requests per path."""

    def __init__(self, root: Path):
        self.root, self.hits = root, {}
        served = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                served.hits[self.path] = served.hits.get(self.path, 0) + 1
                if self.path == "/short.zip":  # a connection that drops after 10 of 1000 bytes
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"PK" + b"x" * 8)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """ml-100k.zip and KuaiRand-Pure.tar.gz laid out as the official ones (a top folder; KuaiRand's
    CSVs under data/, beside a loader script), with a few rows each."""
    root = tmp_path_factory.mktemp("archives")
    ml = write_100k(root / "src" / "ml-100k", make_ratings())
    (ml / "README").write_text("MovieLens 100K (test copy)\n")
    with zipfile.ZipFile(root / "ml-100k.zip", "w") as zf:
        for f in sorted(ml.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    kr = write_log(root / "src" / "KuaiRand-Pure" / "data", make_rows())
    write_features(kr)
    (kr.parent / "load_data_pure.py").write_text("# loader\n")
    with tarfile.open(root / "KuaiRand-Pure.tar.gz", "w:gz") as tf:
        tf.add(kr.parent, "KuaiRand-Pure")
    return root


@pytest.fixture(scope="module")
def server(archives):
    s = Served(archives)
    yield s
    s.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_cli(*argv: str) -> int:
    return main(["world", "fetch", *argv, "-q"])


def test_fetch_check_cache_and_import_movielens(tmp_path, archives, server, capsys):
    cache, digest = tmp_path / "cache", sha(archives / "ml-100k.zip")
    out = tmp_path / "ml"
    assert fetch_cli("movielens-100k", "--out", str(out), "--cache-dir", str(cache),
                     "--url", server.url + "/ml-100k.zip", "--sha256", digest) == 0
    line = capsys.readouterr().out.strip()
    assert "downloaded" in line and digest in line and "import-movielens" in line
    assert {"README", "fetch.json", "u.data", "u.item"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "fetch.json").read_text())["sha256"] == digest
    assert (cache / "movielens-100k" / "ml-100k.zip").read_bytes() == (archives / "ml-100k.zip").read_bytes()
    assert [p.name for p in (cache / "movielens-100k").iterdir()] == ["ml-100k.zip"]  # no temp files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders

    # A second fetch into a new folder takes the cached archive: no request reaches the server.
    hits = dict(server.hits)
    out2 = tmp_path / "ml2"
    assert fetch_cli("movielens-100k", "--out", str(out2), "--cache-dir", str(cache),
                     "--url", server.url + "/ml-100k.zip", "--sha256", digest) == 0
    assert "from the cache" in capsys.readouterr().out and server.hits == hits
    # The same folder again: already there, untouched.
    assert fetch_cli("movielens-100k", "--out", str(out2), "--cache-dir", str(cache), "--sha256", digest) == 0
    assert "already there" in capsys.readouterr().out

    # The output feeds the importer directly.
    assert main(["world", "import-movielens", "--src", str(out), "--out", str(tmp_path / "w"),
                 "--embedding-dim", "8", "--eval-days", "3"]) == 0
    assert (tmp_path / "w" / "world.json").is_file()


def test_kuairand_digest_recorded_on_first_fetch_then_enforced(tmp_path, archives, server, capsys,
                                                               monkeypatch):
    # The official archive's pinned MD5 cannot match a test archive: the test's entry is the same
    # KuaiRand-Pure entry without it (what a release with no published digest looks like).
    monkeypatch.setitem(F.ARCHIVES, "kuairand-pure", replace(F.ARCHIVES["kuairand-pure"], md5=None))
    monkeypatch.setenv("HOMEFEED_DATA_MIRROR", server.url)
    monkeypatch.setenv("HOMEFEED_DATA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kr"
    assert fetch_cli("kuairand-pure", "--out", str(out)) == 0
    line = capsys.readouterr().out
    assert "recorded on this first fetch" in line
    record = tmp_path / "cache" / "kuairand-pure" / "KuaiRand-Pure.tar.gz.sha256"
    assert record.read_text().split()[0] == sha(archives / "KuaiRand-Pure.tar.gz")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fetch.json", "log_standard_4_22_to_5_08_pure.csv", "user_features_pure.csv",
                     "video_features_basic_pure.csv"]  # the data/ folder, not the loader beside it
    assert main(["world", "import-kuairand", "--src", str(out), "--out", str(tmp_path / "w"),
                 "--embedding-dim", "8", "--eval-days", "2", "--max-vocab", "50"]) == 0

    # The server now holds another archive under the same name: refused against the record,
    # nothing kept in the cache or in --out.
    (tmp_path / "cache" / "kuairand-pure" / "KuaiRand-Pure.tar.gz").unlink()
    changed = tmp_path / "srv"
    changed.mkdir()
    with tarfile.open(changed / "KuaiRand-Pure.tar.gz", "w:gz") as tf:
        tf.add(out / "user_features_pure.csv", "KuaiRand-Pure/data/log_standard_x_pure.csv")
    other = Served(changed)
    try:
        assert fetch_cli("kuairand-pure", "--out", str(tmp_path / "kr2"), "--mirror", other.url) == 2
    finally:
        other.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch" in err and "recorded on the first fetch" in err
    assert sorted(p.name for p in (tmp_path / "cache" / "kuairand-pure").iterdir()) == [record.name]
    assert not (tmp_path / "kr2").exists()


def test_pinned_digest_mismatch_keeps_nothing(tmp_path, server, capsys):
    cache = tmp_path / "cache"
    assert fetch_cli("movielens-100k", "--out", str(tmp_path / "ml"), "--cache-dir", str(cache),
                     "--mirror", server.url) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch for ml-100k.zip" in err
    assert "bytes, expected 4924029" in err  # the pinned size is checked first
    assert list((cache / "movielens-100k").iterdir()) == [] and not (tmp_path / "ml").exists()
    with pytest.raises(UserError, match="SHA-256 .* expected 0{64} \\(--sha256\\)"):
        F.fetch("movielens-100k", tmp_path / "ml", cache_dir=cache, mirror=server.url, sha256="0" * 64,
                progress=False)


def test_network_and_http_errors_are_one_line(tmp_path, server, capsys):
    closed = f"http://127.0.0.1:{free_port()}/ml-100k.zip"
    for url, message in ((closed, "connection refused"), (server.url + "/nope.zip", "HTTP 404"),
                         (server.url + "/short.zip", "broke off after 10 of 1000 bytes")):
        assert fetch_cli("movielens-100k", "--out", str(tmp_path / "ml"), "--cache-dir",
                         str(tmp_path / "cache"), "--url", url) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and url in err, err
    assert list((tmp_path / "cache" / "movielens-100k").iterdir()) == []


def test_archive_file_unsafe_members_and_occupied_out(tmp_path, archives, capsys):
    cache = tmp_path / "cache"
    digest = sha(archives / "ml-100k.zip")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    assert fetch_cli("movielens-100k", "--out", str(occupied), "--cache-dir", str(cache),
                     "--archive", str(archives / "ml-100k.zip"), "--sha256", digest) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (occupied / "mine.txt").read_text() == "keep me"

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        data = b"x"
        info = tarfile.TarInfo("../escaped/log_standard_1_pure.csv")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert fetch_cli("kuairand-pure", "--out", str(tmp_path / "kr"), "--cache-dir", str(cache),
                     "--archive", str(evil), "--sha256", sha(evil)) == 2
    assert "refusing the member '../escaped/log_standard_1_pure.csv'" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "kr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cache_dir_defaults(tmp_path, monkeypatch):
    from homefeed.settings import load_settings

    for name in ("HOMEFEED_DATA_CACHE", "HOMEFEED_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert F.default_cache_dir(load_settings()) == tmp_path / "xdg" / "homefeed"
    monkeypatch.setenv("HOMEFEED_HOME", str(tmp_path / "home"))
    assert F.default_cache_dir(load_settings()) == tmp_path / "home" / "cache"
    monkeypatch.setenv("HOMEFEED_DATA_CACHE", str(tmp_path / "c"))
    assert F.default_cache_dir(load_settings()) == tmp_path / "c"
