"""Authenticated and encrypted connections, in one place: Kafka SASL/TLS, Redis ACL/TLS, the pull API token.

Every client streamrec makes gets its security options from here, built from
the `Settings`:

- `kafka_options`: confluent-kafka options (every Producer, Consumer and
  AdminClient spreads them, through `streamrec.stream.topics.kafka_security`);
- `faust_credentials`: the same for the faust engine (aiokafka);
- `redis_client` / `redis_kwargs`: Redis or Redis Cluster with the ACL user,
  password and CA;
- `check_kafka` / `check_redis`: start-up checks that turn a refused login or
  an unverifiable certificate into one clear error naming the setting to fix,
  instead of a service retrying forever;
- `pull_token` / `bearer_matches`: the scorer's pull API token, compared in
  constant time;

Secrets (passwords, the token) come from their ``STREAMREC_*`` variable or,
better, from a file named by its ``*_FILE`` twin (a mounted secret); they are
read when a client is built and never logged. CAs are a PEM file path or the
PEM text itself (so either a mounted file or an environment variable works). What of the settings
may be printed or logged is `streamrec.settings.redact_settings`.

"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path
from typing import Any, Mapping

from streamrec.settings import Settings, env_name, redact_url



class SecurityError(RuntimeError):
    """A connection's security settings do not work; the message names the setting to fix."""


# --------------------------------------------------------------------------- #
# Reading secrets and CAs
# --------------------------------------------------------------------------- #
def secret(settings: Settings, field: str) -> str:
    """The value of a secret setting, from its variable or from the file its ``_FILE`` twin names."""
    value: str = getattr(settings, field)
    path: str = getattr(settings, f"{field}_file", "")
    if value and path:
        raise SecurityError(f"both {env_name(field)} and {env_name(field + '_file')} are set; keep one "
                            "(the file is safer: it stays out of the process environment)")
    if not path:
        return value
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SecurityError(f"{env_name(field + '_file')}: cannot read {path} ({exc.strerror}); "
                            "point it at the mounted secret file") from None
    text = text.rstrip("\r\n")  # secret files often end with a newline that is not part of the secret
    if not text:
        raise SecurityError(f"{env_name(field + '_file')}: {path} is empty; put the secret in it")
    return text


def _ca(settings: Settings, field: str) -> tuple[str, str] | None:
    """('pem', text) or ('file', path) for a CA setting, or None when unset (system CAs)."""
    value: str = getattr(settings, field).strip()
    if not value:
        return None
    if value.startswith("-----BEGIN"):
        return "pem", value
    if not Path(value).is_file():
        raise SecurityError(f"{env_name(field)}: no file at {value}; give the CA certificate as a PEM file "
                            "path or as the PEM text itself")
    return "file", value


def ssl_context(settings: Settings, field: str) -> ssl.SSLContext:
    """A client TLS context verifying the server against the CA of ``field`` (or the system CAs)."""
    ca = _ca(settings, field)
    try:
        if ca is None:
            return ssl.create_default_context()
        kind, value = ca
        return ssl.create_default_context(cafile=value) if kind == "file" else \
            ssl.create_default_context(cadata=value)
    except (ssl.SSLError, ValueError) as exc:
        raise SecurityError(f"{env_name(field)}: not a usable PEM CA certificate ({exc})") from None


# --------------------------------------------------------------------------- #
# Kafka
# --------------------------------------------------------------------------- #
def kafka_options(settings: Settings) -> dict[str, Any]:
    """confluent-kafka options for the settings' security protocol ({} for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        user, password = _kafka_login(settings)
        options.update({"sasl.mechanisms": settings.kafka_sasl_mechanism, "sasl.username": user,
                        "sasl.password": password})
    if protocol.endswith("SSL"):
        ca = _ca(settings, "kafka_ssl_ca")
        if ca is not None:
            options["ssl.ca.location" if ca[0] == "file" else "ssl.ca.pem"] = ca[1]
    # A refused login or certificate never heals by retrying: raise it from the client's
    # next poll/flush/list_topics (confluent-kafka re-raises callback exceptions there).
    options["error_cb"] = KafkaErrorCallback(settings)
    return options


def _kafka_login(settings: Settings) -> tuple[str, str]:
    user, password = settings.kafka_sasl_username, secret(settings, "kafka_sasl_password")
    if not user or not password:
        raise SecurityError(
            f"{env_name('kafka_security_protocol')}={settings.kafka_security_protocol} needs "
            f"{env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')} "
            f"(or {env_name('kafka_sasl_password_file')}); "
            + ("the user name is missing" if not user else "the password is missing"))
    return user, password


class KafkaErrorCallback:
    """librdkafka `error_cb`: authentication and TLS failures become a `SecurityError`."""

    def __init__(self, settings: Settings):
        self.bootstrap = settings.kafka_bootstrap
        self.user = settings.kafka_sasl_username
        self.mechanism = settings.kafka_sasl_mechanism
        self.protocol = settings.kafka_security_protocol

    def __call__(self, error) -> None:
        message = kafka_error_message(error, self.bootstrap, self.user, self.mechanism, self.protocol)
        if message:
            raise SecurityError(message)

    def __repr__(self) -> str:
        return f"KafkaErrorCallback({self.bootstrap})"


def kafka_error_message(error, bootstrap: str, user: str, mechanism: str, protocol: str) -> str | None:
    """The clear message for a librdkafka error that is about security, else None."""
    from confluent_kafka import KafkaError

    code, text = error.code(), error.str()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or "SASL" in text:
        return (f"Kafka at {bootstrap} refused the {mechanism} login of user {user!r} ({text}); "
                f"fix {env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')} "
                f"(or {env_name('kafka_sasl_password_file')}), or {env_name('kafka_sasl_mechanism')} "
                "if the broker expects another mechanism")
    if code == KafkaError._SSL:
        return (f"TLS with Kafka at {bootstrap} failed ({text}); set {env_name('kafka_ssl_ca')} to the CA "
                f"that signed the brokers' certificates (a PEM file path or the PEM text), and check that "
                f"{env_name('kafka_security_protocol')}={protocol} is what the listener speaks")
    return None


def faust_credentials(settings: Settings):
    """`broker_credentials` for `faust.App` (None for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings, "kafka_ssl_ca") if protocol.endswith("SSL") else None
    if protocol.startswith("SASL_"):
        user, password = _kafka_login(settings)
        return faust.SASLCredentials(username=user, password=password, ssl_context=context,
                                     mechanism=settings.kafka_sasl_mechanism)
    return faust.SSLCredentials(context)


def check_kafka(settings: Settings, timeout: float = 15.0) -> None:
    """Connect once and read the cluster metadata; a security failure raises `SecurityError`.

    Other failures (broker away) raise confluent-kafka's own `KafkaException`.
    """
    import time

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **kafka_options(settings)})
    deadline = time.monotonic() + timeout
    try:
        while True:
            # list_topics alone would wait out its timeout on a refused login: error_cb (which
            # raises SecurityError) only runs from poll, so alternate short tries with polls.
            admin.poll(0.05)
            try:
                admin.list_topics(timeout=0.5)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    admin.poll(0.1)
                    raise
    finally:
        # The client has no close(): drop this frame's reference, which an error's traceback would keep (and
        # with it a client reconnecting to a broker long gone).
        admin = None  # noqa: F841


# --------------------------------------------------------------------------- #
# Redis
# --------------------------------------------------------------------------- #
def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """Client keyword arguments for the ACL user, password and CA (credentials in the URL win)."""
    kwargs: dict[str, Any] = {}
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    password = secret(settings, "redis_password")
    if password:
        kwargs["password"] = password
    if settings.redis_username and not password:
        raise SecurityError(f"{env_name('redis_username')} is set but no password: set "
                            f"{env_name('redis_password_file')} (or {env_name('redis_password')})")
    ca = _ca(settings, "redis_ssl_ca")
    if settings.redis_url.startswith("rediss://"):
        if ca is not None:
            kwargs["ssl_ca_certs" if ca[0] == "file" else "ssl_ca_data"] = ca[1]
    elif ca is not None:
        raise SecurityError(f"{env_name('redis_ssl_ca')} is set but {env_name('redis_url')} does not start "
                            "with rediss://; use rediss://HOST:PORT/DB for TLS")
    return kwargs


def redis_client(settings: Settings, **options):
    """A Redis client for the settings (cluster-aware when STREAMREC_REDIS_CLUSTER is on).

    ``options`` are passed on (timeouts...); the security ones come from `redis_kwargs`.
    """
    import redis

    kwargs = {**options, **redis_kwargs(settings)}
    if settings.redis_sentinels:
        return _sentinel_primary(settings, kwargs)
    if settings.redis_cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(settings.redis_url, **kwargs)
    return redis.Redis.from_url(settings.redis_url, **kwargs)


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """STREAMREC_REDIS_SENTINELS as (host, port) pairs; a clear error naming the setting when malformed."""
    pairs = []
    for part in filter(None, (p.strip() for p in settings.redis_sentinels.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise SecurityError(f"{env_name('redis_sentinels')}: {part!r} is not HOST:PORT; give the Sentinels as "
                                "HOST:PORT,HOST:PORT,...")
        pairs.append((host, int(port)))
    return pairs


def _sentinel_primary(settings: Settings, kwargs: dict):
    """A client of the primary the Sentinels name: on a failover its connections fail, and the next command
    asks the Sentinels again and goes to the new primary (redis-py's SentinelConnectionPool)."""
    from urllib.parse import urlparse

    from redis.sentinel import Sentinel

    if settings.redis_cluster:
        raise SecurityError(f"{env_name('redis_sentinels')} and {env_name('redis_cluster')} exclude each other: "
                            "Redis Cluster fails over by itself; unset one")
    url = urlparse(settings.redis_url)
    db = int(url.path.lstrip("/") or 0)
    timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if url.password and "password" not in kwargs:
        kwargs = {**kwargs, "password": url.password, **({"username": url.username} if url.username else {})}
    if url.scheme == "rediss":
        kwargs = {**kwargs, "ssl": True}
    sentinel = Sentinel(sentinel_addresses(settings), sentinel_kwargs=timeouts, **kwargs)
    return sentinel.master_for(settings.redis_master_name, db=db)


def redis_error_message(exc: BaseException, settings: Settings) -> str | None:
    """The clear message for a Redis error that is about security, else None."""
    import redis

    where = redact_url(settings.redis_url)
    text = str(exc)
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError)) or \
            any(word in text for word in ("WRONGPASS", "NOAUTH", "NOPERM")):
        user = settings.redis_username or "default"
        return (f"Redis at {where} refused user {user!r} ({text.strip()}); fix {env_name('redis_username')} and "
                f"{env_name('redis_password')} (or {env_name('redis_password_file')}), and the user's ACL "
                "(it needs ~PREFIX* keys, &* channels and +@all or the commands streamrec runs)")
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError) or "SSL" in text or "CERTIFICATE" in text.upper():
        return (f"TLS with Redis at {where} failed ({text.strip()}); set {env_name('redis_ssl_ca')} to the CA "
                f"that signed the server's certificate (a PEM file path or the PEM text), and use rediss:// "
                f"in {env_name('redis_url')}")
    return None


def check_redis(settings: Settings, client=None) -> bool:
    """Ping Redis: True if it answers, False if it is away (services wait for it);
    a refused login or certificate raises `SecurityError` at once."""
    import redis

    own = client is None
    client = client or redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        message = redis_error_message(exc, settings)
        if message:
            raise SecurityError(message) from None
        return False
    finally:
        if own:
            client.close()


def check_services(settings: Settings, kafka: bool = True, redis: bool = True) -> None:
    """The start-up check of a service: fail fast, with the setting to fix, on a security problem."""
    if kafka:
        check_kafka(settings)
    if redis:
        check_redis(settings)


# --------------------------------------------------------------------------- #
# The pull API's bearer token
# --------------------------------------------------------------------------- #
def pull_token(settings: Settings) -> str | None:
    """The token the pull API requires, or None when it is open."""
    return secret(settings, "scorer_pull_token") or None


def bearer_matches(headers: Mapping[str, str], token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (constant-time compare)."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, given = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())
