"""`homefeed world fetch NAME --out DIR`: the official archive of a dataset, checked and unpacked.

The output directory holds the files the matching importer reads, so it goes straight to
`homefeed world import-movielens --src DIR` or `homefeed world import-kuairand --src DIR`
(docs/world.md, docs/movielens.md, docs/kuairand.md).

1. Resolve the archive (`ARCHIVES`): its official URL, or `--url URL`, or a mirror that holds the
   archives under their file names (`--mirror` / `HOMEFEED_DATA_MIRROR` / `data_mirror`).
2. Look in the cache (`--cache-dir`, `HOMEFEED_DATA_CACHE` / `data_cache`; default
   $HOMEFEED_HOME/cache when that variable is set, else $XDG_CACHE_HOME/homefeed or
   ~/.cache/homefeed):
   a cached archive that passes the checks is used without a download; one that fails them is
   removed and fetched again.
3. Download into a temporary file beside the cache entry (progress bar), hashing as it goes;
   check the byte count, the pinned SHA-256 (or, where none is pinned, the SHA-256 recorded on
   the first fetch), the publisher's MD5 and size; only an archive that passes is renamed into
   the cache. A failure removes the temporary file and is one line (connection refused, host not
   found, HTTP status, broken-off download, checksum mismatch).
4. Unpack into a temporary directory beside DIR (members with absolute paths, `..`, links or
   devices are refused), find the folder holding the importer's files, write `fetch.json`
   (name, URL, digests, time) into it and rename it to DIR. DIR must be new or empty, or hold
   the same archive's files already (then nothing is done).

Where the digests come from (never invented here): MovieLens SHA-256 and sizes as pinned by
TensorFlow Datasets (tensorflow_datasets/url_checksums/movielens.txt), the 100K MD5 as GroupLens
publishes it; KuaiRand MD5s from the official KuaiRand README (the Zenodo record
10439422), the 1K size as Zenodo serves it. No SHA-256 of a KuaiRand archive is published: the
first fetch records one (`<cache>/<name>/<file>.sha256`) and every later fetch must match it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from homefeed.errors import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0
MANIFEST = "fetch.json"


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    filename: str
    importer: str  # the `homefeed world` command that reads the unpacked files
    marker: str  # a glob that names the folder holding the importer's files
    description: str
    licence: str
    sha256: str | None = None  # pinned SHA-256; None: recorded on the first fetch
    md5: str | None = None  # the publisher's MD5
    size: int | None = None  # bytes

    @property
    def kind(self) -> str:
        return "zip" if self.filename.endswith(".zip") else "tar"


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
KUAIRAND = "https://zenodo.org/records/10439422/files/"
ARCHIVES = {a.name: a for a in (
    Archive("movielens-100k", GROUPLENS + "ml-100k.zip", "ml-100k.zip", "import-movielens", "u.data",
            "MovieLens 100K: 100,000 ratings of 1,682 movies by 943 users, 1997-98 (4.7 MiB)",
            "GroupLens research licence, see the README inside; cite Harper & Konstan, ACM TiiS 2015",
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            md5="0e33842e24a9c977be4e0107933c0723", size=4_924_029),
    Archive("movielens-latest-small", GROUPLENS + "ml-latest-small.zip", "ml-latest-small.zip",
            "import-movielens", "ratings.csv",
            "MovieLens latest-small: 100,836 ratings of 9,742 movies by 610 users, 1996-2018 (1 MiB)",
            "GroupLens research licence, see the README inside; cite Harper & Konstan, ACM TiiS 2015",
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", size=978_202),
    Archive("kuairand-pure", KUAIRAND + "KuaiRand-Pure.tar.gz", "KuaiRand-Pure.tar.gz",
            "import-kuairand", "log_standard_*.csv",
            "KuaiRand-Pure: 27,285 users, logs of the 7,583 candidate-pool videos, 2022-04-08 to "
            "05-08 (45 MiB; 194 MiB unpacked)",
            "CC BY-SA 4.0; cite Gao et al., KuaiRand, CIKM 2022",
            md5="0820331067a3784d9691136f772b35a7"),
    Archive("kuairand-1k", KUAIRAND + "KuaiRand-1K.tar.gz", "KuaiRand-1K.tar.gz", "import-kuairand",
            "log_standard_*.csv",
            "KuaiRand-1K: 1,000 users' full logs, 4.4 M videos, 2022-04-08 to 05-08 (1.1 GiB; "
            "4.3 GiB unpacked)",
            "CC BY-SA 4.0; cite Gao et al., KuaiRand, CIKM 2022",
            md5="6b0b9c8222d67fcd4c676218edca3f1f", size=1_135_436_720),
)}


@dataclass(frozen=True)
class FetchResult:
    archive: Archive
    out: Path
    url: str
    cached: Path
    sha256: str
    size: int
    downloaded: bool  # False: taken from the cache or from --archive
    recorded: bool  # True: no SHA-256 was pinned and this fetch recorded one
    unpacked: bool  # False: DIR already held this archive's files
    files: int


# -- 1. where from, where to -------------------------------------------------------------------

def get_archive(name: str) -> Archive:
    try:
        return ARCHIVES[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(ARCHIVES)}") from None


def default_cache_dir(settings=None) -> Path:
    from homefeed.settings import load_settings

    settings = settings or load_settings()
    if settings.data_cache is not None:
        return Path(settings.data_cache)
    if os.environ.get("HOMEFEED_HOME"):  # a private home (tests, CI, a second stack) keeps its own
        return Path(settings.home) / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")  # else one cache per user, shared by checkouts
    return (Path(xdg) if xdg else Path.home() / ".cache") / "homefeed"


def source_url(archive: Archive, url: str | None = None, mirror: str | None = None) -> str:
    if url:
        return url
    if mirror:
        return mirror.rstrip("/") + "/" + archive.filename
    return archive.url


# -- 2./3. cache, download, checks ---------------------------------------------------------------

def _digests(path: Path) -> tuple[str, str, int]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def _record_path(cached: Path) -> Path:
    return cached.with_name(cached.name + ".sha256")


def _recorded_sha256(cached: Path) -> str | None:
    record = _record_path(cached)
    if not record.is_file():
        return None
    return record.read_text().split()[0].lower()


def _problem(archive: Archive, cached: Path, got: tuple[str, str, int], sha256: str | None) -> str | None:
    """Why an archive with digests `got` is not the expected one, or None."""
    sha, md5, size = got
    if sha256:  # the user's digest replaces every pinned check
        return None if sha == sha256.lower() else f"SHA-256 {sha}, expected {sha256.lower()} (--sha256)"
    if archive.size is not None and size != archive.size:
        return f"{size} bytes, expected {archive.size}"
    if archive.sha256 and sha != archive.sha256:
        return f"SHA-256 {sha}, expected {archive.sha256} (pinned)"
    if archive.md5 and md5 != archive.md5:
        return f"MD5 {md5}, expected {archive.md5} (the publisher's)"
    recorded = None if archive.sha256 else _recorded_sha256(cached)
    if recorded and sha != recorded:
        return (f"SHA-256 {sha}, expected {recorded} (recorded on the first fetch in "
                f"{_record_path(cached)})")
    return None


def _network_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_S:.0f} s"
    return str(reason) or type(reason).__name__


def _download(url: str, into: Path, filename: str, progress: bool) -> Path:
    """`url` into a temporary file in `into`; returns its path (the caller renames or removes it)."""
    from homefeed import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"homefeed/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http/https/file)
    except urllib.error.HTTPError as exc:
        raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise UserError(f"cannot download {url}: {_network_reason(exc)} (offline? pass --url or "
                        "--mirror, or --archive FILE for a copy downloaded by hand)") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=into)
    tmp, got = Path(tmp_name), 0
    try:
        with response, os.fdopen(fd, "wb") as fh:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=filename,
                      disable=not progress, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        got += len(exc.partial)
                        break  # reported below with the byte counts
                    except (OSError, http.client.HTTPException) as exc:
                        raise UserError(f"download of {url} broke off after {got} bytes: "
                                        f"{_network_reason(exc)}") from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise UserError(f"download of {url} broke off after {got} of {total} bytes")
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def obtain(archive: Archive, cache_dir: Path, *, url: str, sha256: str | None = None,
           archive_file: Path | None = None, progress: bool = True) -> tuple[Path, str, int, bool, bool]:
    """The checked archive in the cache: (path, sha256, size, downloaded, recorded)."""
    entry = Path(cache_dir) / archive.name
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache directory {entry}: {exc.strerror}") from None
    cached = entry / archive.filename
    if cached.is_file() and archive_file is None:
        got = _digests(cached)
        problem = _problem(archive, cached, got, sha256)
        if problem is None:
            return cached, got[0], got[2], False, False
        log.warning("cached %s does not match (%s): fetching it again", cached, problem)
        cached.unlink()

    if archive_file is not None:
        if not Path(archive_file).is_file():
            raise UserError(f"--archive {archive_file}: no such file")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=entry)
        os.close(fd)
        shutil.copyfile(archive_file, tmp_name)
        tmp, origin = Path(tmp_name), str(archive_file)
    else:
        tmp, origin = _download(url, entry, archive.filename, progress), url
    try:
        got = _digests(tmp)
        problem = _problem(archive, cached, got, sha256)
        if problem is not None:
            raise UserError(f"checksum mismatch for {archive.filename} from {origin}: {problem}; "
                            "the file was not kept")
        os.replace(tmp, cached)
    finally:
        tmp.unlink(missing_ok=True)
    recorded = False
    if not archive.sha256 and not sha256 and _recorded_sha256(cached) is None:
        _record_path(cached).write_text(
            f"{got[0]}  {archive.filename}\n# recorded on the first fetch, from {origin}, at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        recorded = True
    return cached, got[0], got[2], archive_file is None, recorded


# -- 4. unpack ------------------------------------------------------------------------------------

def _safe_name(name: str, where: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserError(f"{where}: refusing the member {name!r} (a path outside the folder)")


def _unpack(archive: Archive, path: Path, into: Path, progress: bool) -> None:
    try:
        if archive.kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in tqdm(zf.infolist(), desc="unpack", unit="file", disable=not progress,
                                 leave=False):
                    _safe_name(info.filename, path)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise UserError(f"{path}: refusing the member {info.filename!r} (a link)")
                    zf.extract(info, into)
        else:
            with tarfile.open(path, "r:*") as tf:
                for member in tqdm(tf, desc="unpack", unit="file", disable=not progress, leave=False):
                    _safe_name(member.name, path)
                    if not (member.isfile() or member.isdir()):
                        raise UserError(f"{path}: refusing the member {member.name!r} (not a plain "
                                        "file or folder)")
                    if hasattr(tarfile, "data_filter"):
                        tf.extract(member, into, filter="data")
                    else:  # Python < 3.11.4: the checks above are the filter
                        tf.extract(member, into)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise UserError(f"{path}: not a readable {archive.kind} archive ({exc})") from None


def _data_folder(archive: Archive, root: Path) -> Path:
    """The shallowest folder under `root` holding a file that matches the archive's marker."""
    found = sorted((p.parent for p in root.rglob(archive.marker) if p.is_file()),
                   key=lambda p: (len(p.relative_to(root).parts), str(p)))
    if not found:
        raise UserError(f"the {archive.filename} archive holds no {archive.marker}: not the "
                        f"{archive.name} release")
    return found[0]


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def unpack(archive: Archive, path: Path, out: Path, *, sha256: str, url: str,
           progress: bool = True) -> tuple[bool, int]:
    """Unpack into `out` (new or empty); (unpacked, files). An `out` that already holds this
    archive's files (its fetch.json says so) is left as it is."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} is a file")
        seen = _manifest(out)
        if seen and seen.get("name") == archive.name and seen.get("sha256") == sha256:
            return False, sum(1 for p in out.iterdir() if p.name != MANIFEST)
        if any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not empty: choose a new directory or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".unpack", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot write beside --out {out}: {exc.strerror}") from None
    try:
        _unpack(archive, path, staging, progress)
        folder = _data_folder(archive, staging)
        (folder / MANIFEST).write_text(json.dumps({
            "name": archive.name, "url": url, "file": archive.filename, "sha256": sha256,
            "md5": archive.md5, "importer": f"homefeed world {archive.importer}",
            "licence": archive.licence,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
        files = sum(1 for p in folder.iterdir() if p.name != MANIFEST)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True, files


def fetch(name: str, out: Path | str, *, cache_dir: Path | str | None = None, url: str | None = None,
          mirror: str | None = None, sha256: str | None = None, archive_file: Path | str | None = None,
          progress: bool = True) -> FetchResult:
    """Steps 1-4 for the dataset `name` (a key of ARCHIVES)."""
    from homefeed.settings import load_settings

    archive = get_archive(name)
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise UserError(f"--sha256 {sha256!r} is not 64 hex digits")
    settings = load_settings()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(settings)
    where = source_url(archive, url, mirror if mirror is not None else settings.data_mirror)
    cached, digest, size, downloaded, recorded = obtain(
        archive, cache, url=where, sha256=sha256,
        archive_file=Path(archive_file) if archive_file is not None else None, progress=progress)
    unpacked, files = unpack(archive, cached, Path(out), sha256=digest, url=where, progress=progress)
    return FetchResult(archive, Path(out), where, cached, digest, size, downloaded, recorded,
                       unpacked, files)
