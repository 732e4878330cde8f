"""`make test-containers`: the images and the compose stack, built and run on a real engine.

1. Engine: `docker.io` and `docker-compose` are installed with apt-get when missing (as root);
   when no engine answers, `dockerd` is started on a private data root (stopped and wiped at the
   end). A client that needs buildx (Docker >= 23 without the plugin) is passed over for one that
   builds without it.
2. Base image: `python:3.11-slim` pulled, else a stand-in built with debootstrap (bookworm) and
   `docker import`. Redis and Kafka: the compose file's upstream images, else stand-ins built from
   Debian's redis-server and the Tansu broker wheel (tests/containers/*.Dockerfile).
3. torch: PyTorch's CPU index (the images' default) when it answers, else TORCH_INDEX_URL, else a
   CPU wheel from pip's find-links served on loopback as an index.
4. Images, built side by side: the project image (Dockerfile) and the bento image
   (`homefeed bento build` with an exported model, then `bentoml containerize`).
5. Compose stack (`docker-compose.yml`, its own project name and loopback ports): a model exported
   into the volume, a small world replayed, consumer and ranker up; a replayed user's ranking
   comes from their sequence; a live action changes it through the containerized service; the
   consumer container is stopped, actions are sent, it is started again and every one arrives.
6. The bento image on its own: `docker run` with only environment variables (REDIS_URL) against
   the stack's Redis answers /rank with 200.
7. Everything it made is removed: containers, networks, volumes, images, the private engine.
   The last line says what was verified.

    python tests/containers/run.py [--keep]     # --keep: leave the stack and images for a look
    python tests/containers/run.py --project-image homefeed:latest --bento-image IMAGE   # test those
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from homefeed.http_client import request  # the project's venv runs this script
from homefeed.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE_IMAGE = "python:3.11-slim"
DEBIAN_MIRROR = os.environ.get("HOMEFEED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
START = time.monotonic()


class Failed(Exception):
    """A check or a step failed: one line, printed as such."""


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.0f}s] {message}", flush=True)


def sh(cmd: list[str], *, env: dict | None = None, check: bool = True, timeout: float = 1800,
       capture: bool = False, quiet: bool = False, log: Path | None = None) -> subprocess.CompletedProcess:
    if not quiet:
        say("$ " + " ".join(cmd)[:300])
    out = open(log, "ab") if log else None
    try:
        result = subprocess.run(cmd, env=env, timeout=timeout, text=not out,
                                stdout=out or (subprocess.PIPE if capture else None),
                                stderr=subprocess.STDOUT if out else (subprocess.PIPE if capture else None))
    finally:
        if out:
            out.close()
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "")[-3000:] if capture else ""
        if log:
            detail = log.read_text(errors="replace")[-3000:]
        raise Failed(f"`{' '.join(cmd)[:200]}` exited {result.returncode}\n{detail}")
    return result


def wait_for(what: str, probe, timeout_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, Failed) as exc:
            last = exc
        time.sleep(every_s)
    raise Failed(f"{what}: not within {timeout_s:.0f}s" + (f" (last error: {last})" if last else ""))


# -- 1. the engine ---------------------------------------------------------------------------
def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Failed(f"{' '.join(packages)} missing, and not root with apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(["apt-get", "update", "-qq"], env=env)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)


def client_works_without_buildx(client: str) -> bool:
    """Docker >= 23 clients build with buildx only; bentoml's docker backend needs a client
    that builds (BuildKit) without it."""
    version = subprocess.run([client, "version", "--format", "{{.Client.Version}}"],
                             capture_output=True, text=True).stdout.strip()
    major = int(re.match(r"(\d+)", version).group(1)) if re.match(r"\d+", version) else 0
    if major and major < 23:
        return True
    return subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0


def find_client() -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "docker"
        if candidate.is_file() and os.access(candidate, os.X_OK) and client_works_without_buildx(str(candidate)):
            return str(candidate)
    return None


class Engine:
    """A docker client and an engine that answers; a private dockerd when none did."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.data_root: Path | None = None
        self.bridge_existed = Path("/sys/class/net/docker0").exists()
        client = find_client()
        if client is None:
            say("no docker client that builds without buildx: installing docker.io")
            apt_install("docker.io")
            client = find_client()
        if client is None:
            raise Failed("no usable docker client (a Docker >= 23 client needs the buildx plugin)")
        self.client = client
        # Child processes (bentoml containerize, docker-compose) find this client first.
        self.env = dict(os.environ, PATH=str(Path(client).parent) + os.pathsep + os.environ["PATH"],
                        DOCKER_BUILDKIT="1", BENTOML_DO_NOT_TRACK="true")
        self.env.pop("DOCKER_CONTEXT", None)
        for key in list(self.env):  # the host's own homefeed settings (a test session's) stay out
            if key.startswith(("HOMEFEED_", "BENTOML_")) or key in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
                if key not in ("HOMEFEED_DEBIAN_MIRROR", "BENTOML_DO_NOT_TRACK"):
                    del self.env[key]
        self.compose = self._compose_command()

    def _compose_command(self) -> list[str]:
        if subprocess.run([self.client, "compose", "version"], capture_output=True).returncode == 0:
            return [self.client, "compose"]
        if not shutil.which("docker-compose"):
            apt_install("docker-compose")
        return ["docker-compose"]

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return sh([self.client, *args], env=self.env, **kw)

    def answers(self) -> bool:
        return subprocess.run([self.client, "info"], env=self.env, capture_output=True, timeout=60).returncode == 0

    def start(self) -> None:
        if self.answers():
            say("using the running engine")
            return
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
        if dockerd is None:
            apt_install("docker.io")
            dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
        if os.geteuid() != 0 or dockerd is None:
            raise Failed("no container engine answers and dockerd cannot be started (needs root)")
        self.data_root = Path(tempfile.mkdtemp(prefix="homefeed-dockerd-"))
        sock = self.data_root / "docker.sock"
        log = self.workdir / "dockerd.log"
        say(f"starting dockerd (data root {self.data_root})")
        self.proc = subprocess.Popen(
            [dockerd, "--data-root", str(self.data_root / "data"), "--exec-root", str(self.data_root / "exec"),
             "--pidfile", str(self.data_root / "docker.pid"), "--host", f"unix://{sock}"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        wait_for("dockerd to answer", self.answers, 120)

    def stop(self) -> None:
        if self.proc is None:
            return
        say("stopping dockerd and removing its data")
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        if not self.bridge_existed and Path("/sys/class/net/docker0").exists() and shutil.which("ip"):
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True)
        if self.data_root:
            for mount in reversed(Path("/proc/mounts").read_text().splitlines()):
                target = mount.split()[1]
                if target.startswith(str(self.data_root)):
                    subprocess.run(["umount", "-l", target], capture_output=True)
            shutil.rmtree(self.data_root, ignore_errors=True)


# -- 2. images that cannot be pulled ---------------------------------------------------------
def has_image(engine: Engine, image: str) -> bool:
    return engine.docker("image", "inspect", image, check=False, capture=True, quiet=True).returncode == 0


def pull(engine: Engine, image: str) -> bool:
    return engine.docker("pull", "-q", image, check=False, capture=True, timeout=600).returncode == 0


def debootstrap_base(engine: Engine, workdir: Path) -> None:
    """A `python:3.11-slim` stand-in: Debian bookworm's python3 (3.11) with pip, no more."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    rootfs = workdir / "rootfs"
    sh(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
        "bookworm", str(rootfs), DEBIAN_MIRROR], log=workdir / "debootstrap.log", timeout=1200)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)  # like the real image
    for name, target in (("python", "python3"), ("pip", "pip3")):
        (rootfs / "usr/bin" / name).unlink(missing_ok=True)
        (rootfs / "usr/bin" / name).symlink_to(target)
    cafile = ssl.get_default_verify_paths().cafile  # this machine's trust store (a TLS proxy's CA)
    if cafile and Path(cafile).is_file():
        shutil.copyfile(cafile, rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([engine.client, "import", "-c", "ENV LANG=C.UTF-8", "-c",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "-c", 'CMD ["python3"]', "-", BASE_IMAGE],
                   stdin=tar.stdout, env=engine.env, check=True, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


# -- 3. where torch comes from ---------------------------------------------------------------
def torch_spec() -> str:
    match = re.search(r'ARG TORCH_SPEC="([^"]+)"', (ROOT / "Dockerfile").read_text())
    return match.group(1) if match else "torch"


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except (OSError, urllib.error.URLError):
        return False


def local_torch_wheel() -> Path | None:
    """A CPU torch wheel of the pinned version in pip's find-links directories."""
    version = torch_spec().partition("==")[2]
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                           capture_output=True, text=True).stdout.split()
    for directory in dirs + found:
        for wheel in sorted(Path(directory.removeprefix("file://")).glob(f"torch-{version}+cpu-cp311-*.whl")):
            return wheel
    return None


class LoopbackIndex:
    """A one-package index (PEP 503 layout) serving a local wheel on 127.0.0.1."""

    def __init__(self, wheel: Path, workdir: Path):
        root = workdir / "index"
        (root / "torch").mkdir(parents=True, exist_ok=True)
        (root / "torch" / wheel.name).symlink_to(wheel)
        handler = functools.partial(QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# -- in-container snippets (run with `python -c` in the project image) ----------------------
SEND_ACTIONS = """
import sys, time
from homefeed import events as E
from homefeed.settings import load_settings
from homefeed.stream.producer import Producer
user, pins, tag = int(sys.argv[1]), [int(p) for p in sys.argv[2].split(',')], sys.argv[3]
settings = load_settings()
producer = Producer(settings)
now = int(time.time() * 1000)
records = [(str(user).encode(), E.ActionEvent(f'{tag}-{i}', user, pin, E.ActionType.REPIN, now + i).to_json(), None)
           for i, pin in enumerate(pins)]
producer.send_all(settings.actions_topic, iter(records), total=len(records), desc=tag)
producer.close()
print(int(time.time() * 1000))
"""

READ_SEQUENCE = """
import json, sys
from homefeed import features as F
from homefeed.feature_store import open_store
user = int(sys.argv[1])
row = open_store().get_online_features(features=F.feature_refs(F.USER_ACTION_SEQUENCE, [F.SEQ_PIN_IDS]),
                                       entity_rows=[{F.USER_ID: user}]).to_dict()
print(json.dumps(row[F.SEQ_PIN_IDS][0] or []))
"""


def readable(directory: Path) -> None:
    """Let the containers' users (uid 10001) read what the host wrote."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- the run -----------------------------------------------------------------------------------
class Run:
    def __init__(self, keep: bool, project_image: str | None = None, bento_image: str | None = None):
        self.keep = keep
        self.given = {"project": project_image, "bento": bento_image}
        self.id = uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix="homefeed-containers-"))
        self.workdir.chmod(0o755)  # mounted read-only into containers running as other users
        self.engine = Engine(self.workdir)
        self.project = f"homefeed-test-{self.id}"
        self.image = project_image or f"homefeed-test:{self.id}"
        self.bento_image = bento_image or f"homefeed-service-test:{self.id}"
        self.images_made: list[str] = []
        self.index: LoopbackIndex | None = None
        self.verified: list[str] = []
        self.figures: dict[str, object] = {}
        self.ranker_port, self.metrics_port, self.bento_port = free_port(), free_port(), free_port()
        self.compose_files = ["-f", str(ROOT / "docker-compose.yml")]
        # compose's variables, on top of the engine's environment (DOCKER_HOST once it started)
        self.compose_env = dict(HOMEFEED_IMAGE=self.image, HOMEFEED_RANKER_PORT=str(self.ranker_port),
                                HOMEFEED_CONSUMER_METRICS_PORT=str(self.metrics_port))
        self.compose_up = False

    # -- helpers
    def compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return sh([*self.engine.compose, "-p", self.project, *self.compose_files, *args],
                  env={**self.engine.env, **self.compose_env}, **kw)

    def in_container(self, service: str, code: str, *args: str) -> str:
        return self.compose("exec", "-T", service, "python", "-c", code, *args, capture=True,
                            quiet=True, timeout=180).stdout.strip().splitlines()[-1]

    def rank(self, port: int, body: dict) -> dict:
        status, text = request("POST", f"http://127.0.0.1:{port}/rank", body)
        if status != 200:
            raise Failed(f"/rank answered {status}: {text[:300]}")
        return json.loads(text)

    # -- steps
    def images(self) -> None:
        engine = self.engine
        if not has_image(engine, BASE_IMAGE) and not pull(engine, BASE_IMAGE):
            say(f"{BASE_IMAGE} cannot be pulled: building a stand-in with debootstrap")
            debootstrap_base(engine, self.workdir)
            self.images_made.append(BASE_IMAGE)
        upstream = {"redis": "redis:7.4", "kafka": "apache/kafka:3.9.1"}
        local = {}
        for service, image in upstream.items():
            if not has_image(engine, image) and not pull(engine, image):
                local[service] = f"homefeed-test-{service}:{self.id}"
        build_args, network = self.torch_source()
        jobs = []
        if not self.given["project"]:
            jobs.append(("project image", [engine.client, "build", *network, *build_args, "-t", self.image, str(ROOT)]))
            self.images_made.append(self.image)
        for service, tag in local.items():
            dockerfile = HERE / ("redis.Dockerfile" if service == "redis" else "tansu.Dockerfile")
            jobs.append((f"{service} stand-in",
                         [engine.client, "build", "-q", "-f", str(dockerfile), "-t", tag, str(HERE)]))
            self.images_made.append(tag)
        if local:
            say(f"upstream {', '.join(upstream[s] for s in local)} cannot be pulled: local stand-ins")
            self.compose_files += ["-f", str(HERE / "compose.local-images.yml")]
            self.compose_env.update(HOMEFEED_TEST_REDIS_IMAGE=local.get("redis", upstream["redis"]),
                                    HOMEFEED_TEST_KAFKA_IMAGE=local.get("kafka", upstream["kafka"]))
        self.export_model()
        if not self.given["bento"]:
            containerize = [sys.executable, "-m", "bentoml", "containerize", self.build_bento(), "-t", self.bento_image]
            if network:
                containerize += ["--opt", "network=host"]
            jobs.append(("bento image", containerize))
            self.images_made.append(self.bento_image)
        started = time.monotonic()
        procs = []
        for name, cmd in jobs:  # side by side: downloads overlap the other builds' installs
            log = self.workdir / f"build-{name.replace(' ', '-')}.log"
            say(f"building the {name} (log {log})")
            procs.append((name, log, time.monotonic(), subprocess.Popen(
                cmd, env=self.bento_env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)))
        pending = list(procs)
        while pending:  # each build's own duration
            for job in list(pending):
                name, log, t0, proc = job
                if proc.poll() is None:
                    continue
                pending.remove(job)
                if proc.returncode != 0:
                    for *_, other in pending:
                        other.kill()
                    raise Failed(f"building the {name} failed:\n{log.read_text(errors='replace')[-3000:]}")
                self.figures[f"build {name} (s)"] = round(time.monotonic() - t0)
            time.sleep(1)
        say(f"images built in {time.monotonic() - started:.0f}s")
        for name, image in (("project", self.image), ("bento", self.bento_image)):
            size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", image, capture=True, quiet=True).stdout)
            self.figures[f"{name} image (GB)"] = round(size / 1e9, 2)
        torch = engine.docker("run", "--rm", self.image, "python", "-c",
                              "import torch; print(torch.__version__)", capture=True, quiet=True).stdout.split()[-1]
        if not torch.endswith("+cpu"):
            raise Failed(f"the project image has torch {torch}, not the CPU build")
        if self.figures["project image (GB)"] > 2.5:
            raise Failed(f"the project image is {self.figures['project image (GB)']} GB (target <= 2.5 GB)")
        self.verified.append(f"project image {self.figures['project image (GB)']} GB with torch {torch}")

    def torch_source(self) -> tuple[list[str], list[str]]:
        """(build args, network args) for the project image; sets the bento build's env."""
        self.bento_env = dict(self.engine.env, BENTOML_HOME=str(self.workdir / "bentoml"),
                              HOMEFEED_HOME=str(self.workdir / "bento-home"))
        explicit = os.environ.get("TORCH_INDEX_URL")
        if explicit:
            self.bento_env["UV_EXTRA_INDEX_URL"] = explicit
            network = ["--network", "host"] if "127.0.0.1" in explicit or "localhost" in explicit else []
            return ["--build-arg", f"TORCH_INDEX_URL={explicit}"], network
        if reachable(CPU_INDEX + "/torch/"):
            return [], []
        wheel = local_torch_wheel()
        if wheel is None:
            raise Failed(f"{CPU_INDEX} does not answer and pip's find-links hold no CPU {torch_spec()} "
                         "wheel: set TORCH_INDEX_URL")
        self.index = LoopbackIndex(wheel, self.workdir)
        say(f"{CPU_INDEX} does not answer: serving {wheel.name} at {self.index.url}")
        self.bento_env["UV_EXTRA_INDEX_URL"] = self.index.url
        return ["--build-arg", f"TORCH_INDEX_URL={self.index.url}"], ["--network", "host"]

    def export_model(self) -> None:
        """An (untrained, deterministic) model exported into a private BentoML home; its run
        directory is what the compose stack imports."""
        code = ("from homefeed.training.export import export_untrained; import sys; "
                "print(export_untrained(sys.argv[1])[0])")
        run = self.workdir / "run"
        self.model_tag = sh([sys.executable, "-c", code, str(run)], env=self.bento_env,
                            capture=True).stdout.strip().splitlines()[-1]
        readable(run)

    def build_bento(self) -> str:
        """The bento around the exported model; returns its tag."""
        bento = sh([sys.executable, "-m", "homefeed.cli", "bento", "build", "--model", self.model_tag],
                   env=self.bento_env, capture=True).stdout.strip().splitlines()[-1]
        say(f"model {self.model_tag}, bento {bento}")
        return bento

    def world(self) -> tuple[int, list[int]]:
        """A small world on the host; (the user with the most events, 20 candidate pins)."""
        import pandas as pd

        out = self.workdir / "world"
        sh([sys.executable, "-m", "homefeed.cli", "world", "generate", "--out", str(out), "--users", "40",
            "--pins", "150", "--days", "2", "--seed", "0", "-q"], env=self.bento_env)
        readable(out)
        events = pd.read_parquet(out / "events.parquet")
        self.figures["world events"] = len(events)
        user = int(events["user_id"].value_counts().idxmax())
        pins = sorted(pd.read_parquet(out / "pins.parquet")["pin_id"].astype(int).tolist())[:20]
        return user, pins

    def stack(self) -> None:
        user, candidates = self.world()
        self.compose_up = True
        # One one-off job (it starts redis, kafka and `apply` first): the model into the volume's
        # BentoML store, the world onto Kafka.
        out = self.compose("run", "--rm", "-v", f"{self.workdir / 'run'}:/import/run:ro",
                           "-v", f"{self.workdir / 'world'}:/import/world:ro", "trainer", "sh", "-c",
                           "homefeed export /import/run && homefeed stream produce --world /import/world",
                           capture=True).stdout.strip().splitlines()
        say(f"model exported into the volume ({out[-2]}), world replayed: {out[-1]}")
        self.compose("up", "-d", "consumer", "ranker")
        url = f"http://127.0.0.1:{self.ranker_port}"
        produced = self.figures["world events"]
        self.caught_up(produced)
        wait_for("the ranker's /readyz", lambda: request("GET", url + "/readyz", timeout_s=5)[0] == 200, 300, 2)
        say(f"consumer caught up on {produced} events, ranker ready")
        restarts = self.consumer_restarts()
        self.figures["consumer restarts"] = restarts
        if restarts:  # its watchdog ended a hung process (stream/watchdog.py): say so, with its stacks
            logs = self.compose("logs", "--no-color", "--tail", "150", "consumer", check=False, capture=True,
                                quiet=True)
            say(f"the consumer restarted {restarts}x before catching up; its log:\n{logs.stdout[-12000:]}")

        # A replayed user is ranked from their sequence by the containerized service.
        when = int(time.time() * 1000) + 120_000  # one request time for every comparison
        body = {"user_id": user, "candidates": candidates, "k": len(candidates), "request_time_ms": when}
        before = self.rank(self.ranker_port, body)
        if before["cold_start"] or before["degraded"]:
            raise Failed(f"user {user} was replayed but ranks as cold start/degraded: {before}")
        self.verified.append(f"compose stack ranks replayed user {user} from their sequence")

        # A live action changes the ranking.
        live = [p["pin_id"] for p in before["items"][-3:]]  # repin the three lowest-ranked pins
        sent_ms = int(self.in_container("ranker", SEND_ACTIONS, str(user), ",".join(map(str, live)),
                                        f"live-{self.id}"))
        after = wait_for("the live action to change the ranking",
                         lambda: (r := self.rank(self.ranker_port, body))["items"] != before["items"] and r, 60, 0.1)
        seconds = time.time() - sent_ms / 1000  # from the producer's flush (same clock)
        moved = [i["pin_id"] for i in after["items"]] != [i["pin_id"] for i in before["items"]]
        self.figures["live action -> ranking changed (s)"] = round(seconds, 2)
        self.verified.append(f"a live action changed the ranking in {seconds:.1f}s"
                             + (" (order changed)" if moved else " (scores changed, same order)"))

        # A consumer restart loses nothing: actions sent while it is down all arrive.
        sequence = json.loads(self.in_container("ranker", READ_SEQUENCE, str(user)))
        self.compose("stop", "consumer")
        while_down = candidates[:5]
        self.in_container("ranker", SEND_ACTIONS, str(user), ",".join(map(str, while_down)), f"down-{self.id}")
        self.compose("start", "consumer")
        self.caught_up(len(while_down))
        wait_for("the group's committed offsets to reach the end", lambda: self.lag() == 0, 60, 1)
        expected = (list(reversed(while_down)) + sequence)[:100]
        got = wait_for("the actions sent during the restart in the online sequence",
                       lambda: (s := json.loads(self.in_container("ranker", READ_SEQUENCE, str(user)))) == expected
                       and s,
                       60, 1)
        self.verified.append(f"consumer restart lost nothing ({len(while_down)} actions sent while it was down, "
                             f"sequence {len(got)} long, lag 0)")

    def caught_up(self, records: int) -> None:
        """Wait until this consumer process polled `records` actions and its lag gauge is 0 on
        every partition (its /metrics, published on loopback)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"

        def done() -> bool:
            text = request("GET", url, timeout_s=5)[1]
            polled = sum(float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith('homefeed_stream_events_in_total{topic="user-actions"'))
            lags = [float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('homefeed_stream_consumer_lag{') and 'topic="user-actions"' in line]
            return polled >= records and len(lags) > 0 and sum(lags) == 0

        try:
            wait_for(f"the consumer to take {records} actions and reach lag 0", done, 300, 1)
        except Failed as exc:  # say why: the consumer's own last lines, with every thread's stack
            inside = self.compose("exec", "-T", "consumer", "python", "-c",
                                  "import urllib.request; print(len(urllib.request.urlopen("
                                  "'http://127.0.0.1:9108/metrics', timeout=5).read()), 'bytes of metrics inside')",
                                  check=False, capture=True, quiet=True, timeout=60)
            self.compose("kill", "-s", "SIGUSR1", "consumer", check=False, capture=True, quiet=True)
            time.sleep(3)
            logs = self.compose("logs", "--no-color", "--tail", "150", "consumer", check=False, capture=True,
                                quiet=True)
            say(f"metrics probed inside the consumer container: {(inside.stdout + inside.stderr)[-600:]}")
            raise Failed(f"{exc}\nconsumer logs:\n{logs.stdout[-12000:]}{logs.stderr[-1000:]}") from None

    def consumer_restarts(self) -> int:
        cid = self.compose("ps", "-q", "consumer", capture=True, quiet=True).stdout.strip()
        return int(self.engine.docker("inspect", "-f", "{{.RestartCount}}", cid, capture=True,
                                      quiet=True).stdout.strip() or 0)

    def lag(self) -> int:
        status = json.loads(self.compose("exec", "-T", "consumer", "homefeed", "stream", "status", "--json",
                                         capture=True, quiet=True, timeout=120).stdout)
        topic = status["topics"]["user-actions"]
        if any(p["lag"] is None for p in topic if p["end"]):
            return 1
        return sum(p["lag"] or 0 for p in topic)

    def bento(self) -> None:
        """The bento image alone: only environment variables, nothing mounted."""
        network = self.network_name()
        name = f"homefeed-bento-{self.id}"
        self.engine.docker("run", "-d", "--name", name, "--network", network,
                           "-p", f"127.0.0.1:{self.bento_port}:3000",
                           "-e", "REDIS_URL=redis://redis:6379/0", "-e", "HOMEFEED_SERVING_WORKERS=1",
                           self.bento_image, capture=True)
        self.bento_container = name
        url = f"http://127.0.0.1:{self.bento_port}"
        try:
            wait_for("the bento container's /readyz",
                     lambda: request("GET", url + "/readyz", timeout_s=5)[0] == 200, 300, 2)
        except Failed:
            logs = self.engine.docker("logs", "--tail", "40", name, check=False, capture=True, quiet=True)
            raise Failed(f"the bento container did not become ready:\n{logs.stdout}{logs.stderr}") from None
        status, text = request("POST", url + "/rank", {"user_id": 1, "candidates": [1, 2, 3], "k": 2})
        if status != 200:
            raise Failed(f"bento /rank answered {status}: {text[:300]}")
        served = json.loads(text)["model_version"]
        env = self.engine.docker("image", "inspect", "-f", "{{json .Config.Env}}", self.bento_image,
                                 capture=True, quiet=True).stdout
        packed = next(e.partition("=")[2] for e in json.loads(env) if e.startswith("HOMEFEED_MODEL="))
        if served != packed:
            raise Failed(f"the bento serves {served}, not the model it was built with ({packed})")
        self.verified.append(f"bento image /rank 200 with only REDIS_URL set (model {served} inside)")

    def network_name(self) -> str:
        out = self.engine.docker("network", "ls", "--filter", f"label=com.docker.compose.project={self.project}",
                                 "--format", "{{.Name}}", capture=True, quiet=True).stdout.split()
        if not out:
            raise Failed(f"no network of compose project {self.project}")
        return out[0]

    def cleanup(self) -> None:
        if getattr(self, "bento_container", None):
            self.engine.docker("rm", "-f", self.bento_container, check=False, capture=True, quiet=True)
        if self.compose_up:
            self.compose("--profile", "tools", "down", "-v", "--remove-orphans", "--timeout", "20",
                         check=False, capture=True)
        for image in self.images_made:
            self.engine.docker("rmi", "-f", image, check=False, capture=True, quiet=True)
        if self.engine.proc is None:  # a shared engine: our dangling layers, not the user's cache
            self.engine.docker("image", "prune", "-f", "--filter", "dangling=true", check=False,
                               capture=True, quiet=True)
        if self.index:
            self.index.close()

    def main(self) -> int:
        failure = None
        try:
            self.engine.start()
            self.images()
            self.stack()
            self.bento()
        except Failed as exc:
            failure = str(exc)
        finally:
            if self.keep:
                say(f"--keep: compose project {self.project}, images {self.images_made} left in place")
            else:
                with contextlib.suppress(Exception):
                    self.cleanup()
                self.engine.stop()
                shutil.rmtree(self.workdir, ignore_errors=True)
            say("figures: " + json.dumps(self.figures))
        total = time.monotonic() - START
        if failure:
            print(f"containers FAILED after {total:.0f}s: {failure}\nverified before that: "
                  + ("; ".join(self.verified) or "nothing"), flush=True)
            return 1
        print(f"containers verified in {total:.0f}s: " + "; ".join(self.verified), flush=True)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack, images and engine running")
    parser.add_argument("--project-image", help="test this project image instead of building one")
    parser.add_argument("--bento-image", help="test this bento image instead of building one")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    return Run(args.keep, args.project_image, args.bento_image).main()


if __name__ == "__main__":
    raise SystemExit(main())
