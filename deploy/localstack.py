"""The local stack without Docker: Apache Kafka (KRaft), redis-server, Prometheus.

Each server is a child process started in its own session, with a pid file and
a log file under ``<home>/<name>/``; everything binds to 127.0.0.1. ``up`` is
idempotent: a running server is reused, a stale pid file is replaced, and a
port held by some other program is a clear error rather than a hang.

Kafka's jars come from Maven Central through ``deploy/kafka/pom.xml``; Redis
and Prometheus are Debian's packages, installed with apt-get when missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import psutil

from streamrec.settings import Settings

KAFKA_VERSION = "4.1.1"
SERVICES = ("kafka", "redis", "prometheus")


class StackError(RuntimeError):
    """The local stack cannot do what was asked; the message says why and what to do."""


@dataclass
class ServiceState:
    name: str
    state: str  # running | stopped | stale | foreign
    port: int
    pid: int | None
    log: Path
    endpoint: str


# --------------------------------------------------------------------------- #
# Installation
# --------------------------------------------------------------------------- #
def kafka_libs(home: Path) -> Path:
    return home / "kafka" / "libs"


def install_kafka(home: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch the pinned Kafka broker's jars from Maven Central (once)."""
    libs = kafka_libs(home)
    stamp = libs / f".kafka-{KAFKA_VERSION}"
    if stamp.exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(libs.parent / ".install.lock"):
        if not stamp.exists():  # another process may have fetched them while this one waited
            _fetch_kafka(libs, stamp, log)
    return libs


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """One installer at a time across processes (the test suite's workers start stacks side by side)."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch_kafka(libs: Path, stamp: Path, log: Callable[[str], None]) -> None:
    mvn = install_debian("mvn", "maven", log)
    install_debian("java", "openjdk-17-jre-headless", log)
    pom = resources.files("streamrec.deploy").joinpath("kafka/pom.xml")
    log(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    with resources.as_file(pom) as pom_path:
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}", f"-Dkafka.version={KAFKA_VERSION}"],
            capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"mvn could not fetch Kafka's jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    stamp.touch()


def install_debian(binary: str, package: str, log: Callable[[str], None] = print) -> str:
    """The path of `binary`, installing Debian's `package` with apt-get if needed."""
    def installed() -> str | None:
        return shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)

    if found := installed():
        return found
    if os.geteuid() != 0:
        raise StackError(f"{binary} is missing; install it: sudo apt-get install -y {package}")
    # apt-get takes dpkg's lock and fails, not waits, when another apt-get holds it
    with _exclusive(Path(tempfile.gettempdir()) / "streamrec-apt.lock"):
        if found := installed():
            return found
        log(f"installing Debian package {package} ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    found = shutil.which(binary) or f"/usr/bin/{binary}"
    if not Path(found).exists():
        raise StackError(f"{package} installed but {binary} is not on PATH")
    return found


# --------------------------------------------------------------------------- #
# Process bookkeeping
# --------------------------------------------------------------------------- #
def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _holder_of(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except psutil.Error:
        pass
    return "another program"


class LocalService:
    """One server of the local stack: how to start it and how to tell it answers."""

    name: str = ""
    port_setting: str = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._proc: subprocess.Popen | None = None
        self.home = settings.home_path
        self.dir = self.home / self.name
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"

    @property
    def port(self) -> int:
        return getattr(self.settings, self.port_setting)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- to be provided by each server --
    def install(self, log: Callable[[str], None]) -> None: ...

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files, format storage: whatever must exist before the first start."""

    def answers(self) -> bool:
        return port_open(self.port)

    def ports(self) -> list[int]:
        return [self.port]

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- common machinery --
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def state(self) -> ServiceState:
        pid = self.pid()
        if pid is not None:
            state = "running" if self.answers() else "starting"
        elif self.pid_file.exists():
            state = "stale"
        elif any(port_open(p) for p in self.ports()):
            state = "foreign"
        else:
            state = "stopped"
        return ServiceState(self.name, state, self.port, pid, self.log_file, self.endpoint)

    def start(self, timeout: float, log: Callable[[str], None]) -> str:
        """Start (or reuse) the server and wait until it answers; returns 'reused' or 'started'."""
        outcome = self.launch(log)
        self.wait_answering(timeout)
        return outcome

    def wait_answering(self, timeout: float) -> None:
        self._wait(self.pid() or 0, timeout, self._proc)

    def launch(self, log: Callable[[str], None]) -> str:
        """Start the server without waiting for it (servers that need each other, such as a Kafka quorum, start
        together); returns 'reused' or 'started'."""
        self._proc = None
        if self.pid() is not None:
            return "reused"
        if self.pid_file.exists():
            log(f"{self.name}: removing stale pid file {self.pid_file}")
            self.pid_file.unlink()
        for port in self.ports():
            if port_open(port):
                raise StackError(
                    f"{self.name}: port {port} on 127.0.0.1 is already taken by {_holder_of(port)}; "
                    f"stop it or choose another port with {_env_for(self.port_setting)}")
        self.install(log)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.dir, env=self.env(),
                                          start_new_session=True)
        self.pid_file.write_text(str(self._proc.pid))
        return "started"

    def _wait(self, pid: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None or not _alive(pid):
                raise StackError(f"{self.name} exited during start-up; last lines of {self.log_file}:\n"
                                 + _tail(self.log_file))
            if self.answers():
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} did not answer on {self.endpoint} within {timeout:.0f} s; "
                         f"see {self.log_file}:\n" + _tail(self.log_file))

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM, wait for a clean exit, SIGKILL only if it does not come."""
        pid = self.terminate()
        if pid is None:
            return False
        self.wait_exit(pid, timeout)
        return True

    def terminate(self) -> int | None:
        """Send SIGTERM; the pid it went to, or None when the server was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return pid

    def wait_exit(self, pid: int, timeout: float = 60.0) -> None:
        """Wait for the exit of a server sent SIGTERM; SIGKILL at the time-out."""
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _env_for(setting: str) -> str:
    return "STREAMREC_" + setting.upper()


# --------------------------------------------------------------------------- #
# The three servers
# --------------------------------------------------------------------------- #
class KafkaService(LocalService):
    """The single broker of the local stack (also its controller)."""

    name = "kafka"
    port_setting = "kafka_port"
    node_id = 1
    replication = 1
    """Replicas of Kafka's internal topics (consumer offsets, transactions)."""

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_controller_port

    def voters(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.controller_port}"

    def cluster_id_file(self) -> Path:
        return self.dir / "cluster.id"

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def install(self, log):
        install_kafka(self.home, log)

    def _config(self) -> Path:
        return self.dir / "server.properties"

    def listener_lines(self) -> list[str]:
        """Listeners and their protocols (`streamrec.deploy.securestack` replaces them with SASL_SSL)."""
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]

    def format_options(self) -> list[str]:
        """Extra `StorageTool format` arguments (the secure stack adds its SCRAM users)."""
        return []

    def prepare(self) -> None:
        data = self.dir / "data"
        copies, min_isr = self.replication, min(self.replication, 2)
        self._config().write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters()}",
            *self.listener_lines(),
            f"log.dirs={data}",
            "num.partitions=3",
            f"default.replication.factor={copies}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={copies}",
            # Kafka's 50 by default: on one broker each start, and each recovery after a kill -9, loads them all.
            "offsets.topic.num.partitions=5",
            f"transaction.state.log.replication.factor={copies}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={copies}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "delete.topic.enable=true",
            "log.retention.hours=24",
            "log.segment.bytes=67108864",
            "log.cleaner.dedupe.buffer.size=16777216",  # Kafka's 128 MB would not fit a small broker's heap
            "",
        ]))
        (self.dir / "log4j.properties").write_text("\n".join([
            "log4j.rootLogger=INFO, stdout",
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
            "log4j.logger.kafka=INFO",
            "log4j.logger.org.apache.kafka=INFO",
            "",
        ]))
        # Storage is formatted once; the cluster id is kept so data survives restarts.
        cluster_id_file = self.cluster_id_file()
        if not (data / "meta.properties").exists():
            if not cluster_id_file.exists() or cluster_id_file.read_text().startswith("-"):
                cluster_id_file.write_text(new_cluster_id())
            proc = subprocess.run(
                self.java_command("kafka.tools.StorageTool") + ["format", "-t", cluster_id_file.read_text().strip(),
                                                          "-c", str(self._config()), "--ignore-formatted",
                                                          *self.format_options()],
                capture_output=True, text=True, cwd=self.dir)
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    def java_command(self, main: str) -> list[str]:
        return ["java", f"-Xmx{self.settings.kafka_heap}", f"-Xms{min_heap(self.settings.kafka_heap)}",
                "-XX:+UseG1GC", *self.settings.kafka_jvm_options.split(), "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "-cp", f"{kafka_libs(self.home)}/*", main]

    def command(self) -> list[str]:
        return self.java_command("kafka.Kafka") + [str(self._config())]

    def answers(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient
        try:
            from streamrec.stream.topics import kafka_security  # SASL/TLS when the settings ask for it

            AdminClient({"bootstrap.servers": self.endpoint, **kafka_security(self.settings)}).list_topics(timeout=2)
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False


class KafkaNode(KafkaService):
    """One of the replicated stack's three brokers, each also a controller of the KRaft quorum; node n listens
    2(n-1) ports above STREAMREC_KAFKA_PORT and STREAMREC_KAFKA_CONTROLLER_PORT."""

    replication = 3

    def __init__(self, settings: Settings, node_id: int, nodes: int = 3):
        self.node_id, self.nodes, self.name = node_id, nodes, f"kafka-{node_id}"
        super().__init__(settings)

    def _nth(self, base_port: int, node_id: int | None = None) -> int:
        return base_port + 2 * ((node_id or self.node_id) - 1)

    @property
    def port(self) -> int:
        return self._nth(self.settings.kafka_port)

    @property
    def controller_port(self) -> int:
        return self._nth(self.settings.kafka_controller_port)

    def voters(self) -> str:
        return ",".join(f"{n}@127.0.0.1:{self._nth(self.settings.kafka_controller_port, n)}"
                        for n in range(1, self.nodes + 1))

    def cluster_id_file(self) -> Path:
        return self.home / "kafka-cluster.id"  # one id for the three: they form one cluster


def new_cluster_id() -> str:
    """A random KRaft cluster id. Like Kafka's own, never one starting with "-", which the storage
    tool's argument parser would take for an option (1 id in 64 otherwise)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def min_heap(heap: str) -> str:
    return "128m" if heap.endswith("m") and int(heap[:-1]) > 128 else heap


class RedisService(LocalService):
    name = "redis"
    port_setting = "redis_port"

    def install(self, log):
        self.binary = install_debian("redis-server", "redis-server", log)

    def command(self) -> list[str]:
        # Append-only file so features survive a restart of Redis, as in production. Listpack values up to
        # 128 bytes keep the event-id marker hashes compact: 13% less memory per user (docs/capacity.md).
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--daemonize", "no", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--protected-mode", "yes", "--maxmemory-policy", "noeviction", "--hash-max-listpack-value", "128"]

    def answers(self) -> bool:
        import redis
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


class RedisReplicaService(RedisService):
    """The replicated stack's Redis replica, of the primary on STREAMREC_REDIS_PORT (until a failover)."""

    name = "redis-replica"
    port_setting = "redis_replica_port"

    def command(self) -> list[str]:
        return super().command() + ["--replicaof", "127.0.0.1", str(self.settings.redis_port)]


class SentinelService(RedisService):
    """One of three Redis Sentinels watching the primary (quorum 2): they promote the replica when the primary
    has not answered for 3 s. Debian's redis-server in sentinel mode (what `redis-sentinel` runs)."""

    port_setting = "redis_sentinel_port"
    DOWN_AFTER_MS = 3000

    def __init__(self, settings: Settings, index: int):
        self.index, self.name = index, f"sentinel-{index}"
        super().__init__(settings)

    @property
    def port(self) -> int:
        return self.settings.redis_sentinel_port + self.index - 1

    def prepare(self) -> None:
        config = self.dir / "sentinel.conf"
        if config.exists():
            return  # a Sentinel rewrites its file with what it learnt (the current primary): keep it
        name = self.settings.redis_master_name
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
            f"sentinel monitor {name} 127.0.0.1 {self.settings.redis_port} 2",
            f"sentinel down-after-milliseconds {name} {self.DOWN_AFTER_MS}",
            f"sentinel failover-timeout {name} 10000",
            f"sentinel parallel-syncs {name} 1", ""]))

    def command(self) -> list[str]:
        return [self.binary, str(self.dir / "sentinel.conf"), "--sentinel"]


class PrometheusService(LocalService):
    name = "prometheus"
    port_setting = "prometheus_port"

    def install(self, log):
        self.binary = install_debian("prometheus", "prometheus", log)

    def prepare(self) -> None:
        from streamrec.deploy.prometheus_config import write_local_config
        write_local_config(self.settings, self.dir / "prometheus.yml")

    def command(self) -> list[str]:
        return [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"]

    def answers(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False


REPLICATED = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "kafka-1", "kafka-2", "kafka-3")
"""The replicated topology (`streamrec up --replicated`): the primary is "redis"; "kafka" is not used."""


class LocalStack:
    """The servers of the local stack, started and stopped together: one Kafka broker and one Redis, or the
    replicated topology (three brokers; a Redis primary, its replica and three Sentinels)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.services: dict[str, LocalService] = {
            "kafka": KafkaService(settings), "redis": RedisService(settings),
            "prometheus": PrometheusService(settings), "redis-replica": RedisReplicaService(settings),
            **{f"sentinel-{i}": SentinelService(settings, i) for i in (1, 2, 3)},
            **{f"kafka-{i}": KafkaNode(settings, i) for i in (1, 2, 3)}}

    def up(self, with_prometheus: bool = False, timeout: float = 120.0,
           log: Callable[[str], None] = print, replicated: bool = False) -> dict[str, str]:
        names = ["redis", *(REPLICATED if replicated else ["kafka"])] + (["prometheus"] if with_prometheus else [])
        launched = {n: self.services[n].launch(log) for n in names}  # together: a quorum needs its members
        for n in names:
            self.services[n].wait_answering(timeout)
        return launched

    def down(self) -> dict[str, bool]:
        # Kafka first: it may still flush to disk; the others follow.
        # The three brokers together: stopped one by one, the last waits a minute for a quorum that is gone.
        stages = [["prometheus"], ["kafka", "kafka-1", "kafka-2", "kafka-3"], ["sentinel-1", "sentinel-2", "sentinel-3"],
                  ["redis-replica"], ["redis"]]
        stopped = {}
        for names in stages:
            services = [self.services[n] for n in names if n not in REPLICATED or self.services[n].dir.exists()]
            pids = {svc.name: svc.terminate() for svc in services}
            for svc in services:
                if pids[svc.name] is not None:
                    svc.wait_exit(pids[svc.name])
            stopped.update({name: pid is not None for name, pid in pids.items()})
        return stopped

    def quorum_leader(self) -> int:
        """Node id of the replicated stack's active controller, the leader of its KRaft quorum (Kafka's
        metadata-quorum tool)."""
        import re

        node = self.services["kafka-1"]
        tool = node.java_command("org.apache.kafka.tools.MetadataQuorumCommand")
        out = subprocess.run(tool + ["--bootstrap-server", self.replicated_settings().kafka_bootstrap, "describe",
                                     "--status"], capture_output=True, text=True, timeout=120, cwd=node.dir)
        found = re.search(r"LeaderId:\s+(\d+)", out.stdout)
        if not found:
            raise StackError(f"the metadata quorum has no leader:\n{out.stdout}{out.stderr}")
        return int(found.group(1))

    def replicated_settings(self) -> Settings:
        """The settings every client needs for the replicated topology: the three brokers, topics with three
        replicas, and Redis through the Sentinels."""
        s = self.settings
        nodes = [self.services[f"kafka-{i}"] for i in (1, 2, 3)]
        sentinels = [self.services[f"sentinel-{i}"] for i in (1, 2, 3)]
        return s.replace(kafka_bootstrap=",".join(n.endpoint for n in nodes), topic_replication=3,
                         redis_sentinels=",".join(n.endpoint for n in sentinels))

    def status(self) -> list[ServiceState]:
        """Every server of the single stack, and those of the replicated one that were ever started here."""
        replicated = self.services["kafka-1"].dir.exists()
        single_kafka_used = (self.services["kafka"].dir / "data").exists() or not replicated  # else kafka-1 has its port
        return [s.state() for n, s in self.services.items()
                if (n not in REPLICATED or s.dir.exists()) and (n != "kafka" or single_kafka_used)]

    def running(self, name: str) -> bool:
        return self.services[name].state().state == "running"
