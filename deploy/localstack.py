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
        pid = self.pid()
        if pid is not None:
            self._wait(pid, timeout)
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
            proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir, env=self.env(),
                                    start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        self._wait(proc.pid, timeout, proc)
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
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
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
        return True


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
    name = "kafka"
    port_setting = "kafka_port"

    def ports(self) -> list[int]:
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    def install(self, log):
        install_kafka(self.home, log)

    def _config(self) -> Path:
        return self.dir / "server.properties"

    def listener_lines(self) -> list[str]:
        """Listeners and their protocols (`streamrec.deploy.securestack` replaces them with SASL_SSL)."""
        s = self.settings
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]

    def format_options(self) -> list[str]:
        """Extra `StorageTool format` arguments (the secure stack adds its SCRAM users)."""
        return []

    def prepare(self) -> None:
        s = self.settings
        data = self.dir / "data"
        self._config().write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
            *self.listener_lines(),
            f"log.dirs={data}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            # Kafka's 50 by default: on one broker each start, and each recovery after a kill -9, loads them all.
            "offsets.topic.num.partitions=5",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "delete.topic.enable=true",
            "log.retention.hours=24",
            "log.segment.bytes=67108864",
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
        cluster_id_file = self.dir / "cluster.id"
        if not (data / "meta.properties").exists():
            if not cluster_id_file.exists() or cluster_id_file.read_text().startswith("-"):
                cluster_id_file.write_text(new_cluster_id())
            proc = subprocess.run(
                self._java("kafka.tools.StorageTool") + ["format", "-t", cluster_id_file.read_text().strip(),
                                                          "-c", str(self._config()), "--ignore-formatted",
                                                          *self.format_options()],
                capture_output=True, text=True, cwd=self.dir)
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    def _java(self, main: str) -> list[str]:
        return ["java", f"-Xmx{self.settings.kafka_heap}", f"-Xms{min_heap(self.settings.kafka_heap)}",
                "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "-cp", f"{kafka_libs(self.home)}/*", main]

    def command(self) -> list[str]:
        return self._java("kafka.Kafka") + [str(self._config())]

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
        # Append-only file so features survive a restart of Redis, as in production.
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--daemonize", "no", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--protected-mode", "yes", "--maxmemory-policy", "noeviction"]

    def answers(self) -> bool:
        import redis
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


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


class LocalStack:
    """The servers of the local stack, started and stopped together."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.services: dict[str, LocalService] = {
            "kafka": KafkaService(settings), "redis": RedisService(settings),
            "prometheus": PrometheusService(settings)}

    def up(self, with_prometheus: bool = False, timeout: float = 120.0,
           log: Callable[[str], None] = print) -> dict[str, str]:
        names = ["redis", "kafka"] + (["prometheus"] if with_prometheus else [])
        return {n: self.services[n].start(timeout, log) for n in names}

    def down(self) -> dict[str, bool]:
        # Kafka first: it may still flush to disk; the others follow.
        return {n: self.services[n].stop() for n in ("prometheus", "kafka", "redis")}

    def status(self) -> list[ServiceState]:
        return [s.state() for s in self.services.values()]

    def running(self, name: str) -> bool:
        return self.services[name].state().state == "running"
