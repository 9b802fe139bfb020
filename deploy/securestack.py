"""A local Kafka and Redis that demand credentials over TLS, for tests and for trying the secure settings.

- Kafka 4.1.1 (KRaft, one node): the client listener is SASL_SSL with
  SCRAM-SHA-512 users created when the storage is formatted; the controller
  listener stays PLAINTEXT on 127.0.0.1; brokers would talk to each other over
  SASL_SSL too (as the ``admin`` user). TLS uses PEM files, no keytool.
- redis-server: TLS only (``--port 0``), the ``default`` user off, one ACL user.
- A throwaway CA and a server certificate for 127.0.0.1/localhost, made with
  the openssl command line under ``<home>/tls/`` (the CA key never leaves it).

Everything reuses `streamrec.deploy.localstack` (pid files, logs, waiting,
stopping); only the configuration differs. `SecureStack.client_settings`
gives the `Settings` a streamrec service needs to use it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from streamrec.deploy.localstack import KafkaService, LocalStack, RedisService, StackError, install_debian
from streamrec.settings import Settings

MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    """The CA certificate clients trust (PEM)."""
    cert: Path
    key: Path
    server: Path
    """Server private key followed by its certificate: Kafka's PEM keystore."""


def make_tls(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A fresh CA and a server certificate signed by it for ``hosts`` (idempotent per folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "server.crt", folder / "server.key", folder / "server.pem")
    if files.server.exists():
        return files
    openssl = install_debian("openssl", "openssl")  # like redis-server: installed when missing
    ca_key = folder / "ca.key"
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(files.ca),
         "-days", "7", "-subj", "/CN=streamrec throwaway test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files.key),
         "-out", str(folder / "server.csr"), "-subj", f"/CN={hosts[0]}"],
        [openssl, "x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(files.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(files.cert), "-days", "7", "-extfile", str(ext)],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"{' '.join(cmd[:2])} failed making the test certificates:\n{proc.stderr[-2000:]}")
    files.server.write_text(files.key.read_text() + files.cert.read_text())
    for secret_file in (ca_key, files.key, files.server):
        secret_file.chmod(0o600)
    return files


@dataclass(frozen=True)
class Users:
    """The accounts of the secure stack (random passwords unless given)."""

    kafka_user: str = "streamrec"
    kafka_password: str = ""
    redis_user: str = "streamrec"
    redis_password: str = ""
    kafka_admin_password: str = ""

    @classmethod
    def random(cls) -> "Users":
        return cls(kafka_password=secrets.token_urlsafe(18), redis_password=secrets.token_urlsafe(18),
                   kafka_admin_password=secrets.token_urlsafe(18))

    def __repr__(self) -> str:  # passwords stay out of test reports and logs
        return f"Users(kafka_user={self.kafka_user!r}, redis_user={self.redis_user!r})"


class SecureKafkaService(KafkaService):
    """Kafka whose client listener is SASL_SSL (SCRAM-SHA-512) on ``kafka_port``."""

    def __init__(self, settings: Settings, tls: TlsFiles, users: Users):
        super().__init__(settings)
        self.tls, self.users = tls, users

    def listener_lines(self) -> list[str]:
        s = self.settings
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
                f'password="{self.users.kafka_admin_password}";')
        return [
            f"listeners=SASL_SSL://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            f"sasl.enabled.mechanisms={MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.tls.server}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.tls.ca}",
            "ssl.client.auth=none",
        ]

    def format_options(self) -> list[str]:
        return ["--add-scram", f"{MECHANISM}=[name=admin,password={self.users.kafka_admin_password}]",
                "--add-scram", f"{MECHANISM}=[name={self.users.kafka_user},password={self.users.kafka_password}]"]

    def prepare(self) -> None:
        super().prepare()
        self._config().chmod(0o600)  # it holds the inter-broker password


class SecureRedisService(RedisService):
    """redis-server speaking TLS only, with the default user off and one ACL user."""

    def __init__(self, settings: Settings, tls: TlsFiles, users: Users):
        super().__init__(settings)
        self.tls, self.users = tls, users

    def prepare(self) -> None:
        conf = self.dir / "redis.conf"
        # A config file (mode 600) rather than arguments, so the password is not in `ps`.
        conf.write_text("\n".join([
            "bind 127.0.0.1", "port 0", f"tls-port {self.port}", f"dir {self.dir}", "daemonize no",
            'save ""', "appendonly no", "protected-mode yes", "maxmemory-policy noeviction",
            f"tls-cert-file {self.tls.cert}", f"tls-key-file {self.tls.key}", f"tls-ca-cert-file {self.tls.ca}",
            "tls-auth-clients no",
            "user default off",
            f"user {self.users.redis_user} on >{self.users.redis_password} ~* &* +@all",
            ""]))
        conf.chmod(0o600)

    def command(self) -> list[str]:
        return [self.binary, str(self.dir / "redis.conf")]

    def answers(self) -> bool:
        from streamrec.security import check_redis

        try:
            return check_redis(self.settings)
        except Exception:  # noqa: BLE001 - not ready yet
            return False


class SecureStack(LocalStack):
    """Kafka (SASL_SSL) and Redis (ACL + TLS) under ``settings.home``, on the settings' ports."""

    def __init__(self, settings: Settings, users: Users | None = None):
        self.users = users or Users.random()
        self.tls = make_tls(settings.home_path / "tls")
        super().__init__(self._clients(settings))
        self.services["kafka"] = SecureKafkaService(self.settings, self.tls, self.users)
        self.services["redis"] = SecureRedisService(self.settings, self.tls, self.users)

    def _clients(self, base: Settings) -> Settings:
        return base.replace(
            kafka_bootstrap=f"127.0.0.1:{base.kafka_port}",
            kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=MECHANISM,
            kafka_sasl_username=self.users.kafka_user, kafka_sasl_password=self.users.kafka_password,
            kafka_sasl_password_file="", kafka_ssl_ca=str(self.tls.ca),
            redis_url=f"rediss://127.0.0.1:{base.redis_port}/0", redis_username=self.users.redis_user,
            redis_password=self.users.redis_password, redis_password_file="", redis_ssl_ca=str(self.tls.ca))

    @property
    def client_settings(self) -> Settings:
        """Settings for streamrec services and apps using this stack (credentials as values)."""
        return self.settings

    def up(self, with_prometheus: bool = False, timeout: float = 120.0,
           log: Callable[[str], None] = print) -> dict[str, str]:
        if with_prometheus:
            raise StackError("the secure stack runs Kafka and Redis only")
        return super().up(False, timeout, log)


def secret_file(folder: Path, name: str, value: str) -> Path:
    """Write a secret to a file readable by its owner only (as a mounted secret would be)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path
