"""Security settings without servers: secrets from variables and files, client options, clear errors,
redaction, the bearer token check, HTTP binding, and registry paths that cannot escape the root."""

from __future__ import annotations

import doctest
import json

import pytest
from confluent_kafka import KafkaError

import streamrec.security
from streamrec.health import HealthServer
from streamrec.registry import Announcement, Registry, RegistryError, check_name, check_version
from streamrec.security import (SecurityError, bearer_matches, faust_credentials, kafka_error_message,
                                kafka_options, redis_kwargs, secret)
from streamrec.settings import Settings, redact_url

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SASL = dict(kafka_security_protocol="SASL_SSL", kafka_sasl_username="app")


def test_docstring_examples_run():
    assert doctest.testmod(streamrec.security).failed == 0


# --- secrets ------------------------------------------------------------------ #
def test_secret_comes_from_the_variable_or_from_its_file(tmp_path):
    assert secret(Settings(redis_password="pw"), "redis_password") == "pw"
    f = tmp_path / "pw"
    f.write_text("from-file\n")  # the trailing newline of a secret file is not part of the secret
    assert secret(Settings(redis_password_file=str(f)), "redis_password") == "from-file"
    assert secret(Settings(), "redis_password") == ""


def test_secret_errors_name_the_variable(tmp_path):
    with pytest.raises(SecurityError, match="STREAMREC_REDIS_PASSWORD and STREAMREC_REDIS_PASSWORD_FILE"):
        secret(Settings(redis_password="a", redis_password_file="/x"), "redis_password")
    with pytest.raises(SecurityError, match="STREAMREC_KAFKA_SASL_PASSWORD_FILE: cannot read /nonexistent"):
        secret(Settings(kafka_sasl_password_file="/nonexistent"), "kafka_sasl_password")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecurityError, match="is empty"):
        secret(Settings(scorer_pull_token_file=str(tmp_path / "empty")), "scorer_pull_token")


# --- Kafka ---------------------------------------------------------------------- #
def test_plaintext_kafka_needs_no_options():
    assert kafka_options(Settings()) == {} and faust_credentials(Settings()) is None


def test_sasl_ssl_options_with_a_ca_file_or_pem_text(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    (tmp_path / "pw").write_text("s3cret\n")
    opts = kafka_options(Settings(**SASL, kafka_sasl_password_file=str(tmp_path / "pw"), kafka_ssl_ca=str(ca)))
    assert {k: v for k, v in opts.items() if k != "error_cb"} == {
        "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "app",
        "sasl.password": "s3cret", "ssl.ca.location": str(ca)}
    assert "s3cret" not in repr(opts["error_cb"])
    opts = kafka_options(Settings(**SASL, kafka_sasl_password="pw", kafka_ssl_ca=PEM))
    assert opts["ssl.ca.pem"] == PEM.strip() and "ssl.ca.location" not in opts


def test_kafka_settings_mistakes_are_clear():
    with pytest.raises(SecurityError, match="needs STREAMREC_KAFKA_SASL_USERNAME and STREAMREC_KAFKA_SASL_PASSWORD"
                                            ".*password is missing"):
        kafka_options(Settings(**SASL))
    with pytest.raises(SecurityError, match="STREAMREC_KAFKA_SSL_CA: no file at /nope.pem"):
        kafka_options(Settings(**SASL, kafka_sasl_password="pw", kafka_ssl_ca="/nope.pem"))


def test_refused_login_and_certificate_become_messages_naming_the_setting():
    auth = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed")
    msg = kafka_error_message(auth, "k:9093", "app", "SCRAM-SHA-512", "SASL_SSL")
    assert "refused the SCRAM-SHA-512 login of user 'app'" in msg and "STREAMREC_KAFKA_SASL_PASSWORD" in msg
    tls = KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed")
    assert "STREAMREC_KAFKA_SSL_CA" in kafka_error_message(tls, "k:9093", "app", "SCRAM-SHA-512", "SASL_SSL")
    down = KafkaError(KafkaError._TRANSPORT, "Connection refused")
    assert kafka_error_message(down, "k:9093", "app", "SCRAM-SHA-512", "SASL_SSL") is None
    callback = kafka_options(Settings(**SASL, kafka_sasl_password="pw"))["error_cb"]
    callback(down)  # transient: librdkafka keeps retrying
    with pytest.raises(SecurityError, match="STREAMREC_KAFKA_SASL_USERNAME"):
        callback(auth)


def test_faust_gets_the_same_credentials(tmp_path):
    creds = faust_credentials(Settings(**SASL, kafka_sasl_password="pw"))
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == \
        ("SASL_SSL", "SCRAM-SHA-512", "app", "pw")
    assert creds.ssl_context is not None and "pw" not in repr(creds)


# --- Redis ------------------------------------------------------------------------ #
def test_redis_kwargs_for_acl_user_and_tls(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    s = Settings(redis_url="rediss://cache:6380/0", redis_username="app", redis_password="pw", redis_ssl_ca=str(ca))
    assert redis_kwargs(s) == {"username": "app", "password": "pw", "ssl_ca_certs": str(ca)}
    assert redis_kwargs(s.replace(redis_ssl_ca=PEM))["ssl_ca_data"] == PEM.strip()
    assert redis_kwargs(Settings()) == {}


def test_redis_settings_mistakes_are_clear():
    with pytest.raises(SecurityError, match="does not start with rediss://"):
        redis_kwargs(Settings(redis_ssl_ca=PEM))
    with pytest.raises(SecurityError, match="STREAMREC_REDIS_USERNAME is set but no password"):
        redis_kwargs(Settings(redis_username="app"))


# --- what is shown ---------------------------------------------------------------- #
def test_secrets_are_masked_in_reprs_and_printed_settings(capsys):
    s = Settings(kafka_sasl_password="k-secret", redis_password="r-secret", scorer_pull_token="t-secret",
                 redis_url="rediss://app:u-secret@cache:6380/0")
    from rich.pretty import pretty_repr

    for text in (repr(s), str(s), pretty_repr(s), json.dumps(s.redacted_env())):
        assert not any(f"{w}-secret" in text for w in "krtu"), text
    assert s.redacted_env()["STREAMREC_KAFKA_SASL_PASSWORD"] == "***"
    assert Settings.from_env(s.as_env()) == s  # children still get the real values
    from argparse import Namespace

    from streamrec.cli import cmd_config

    assert cmd_config(Namespace(settings=s, json=True)) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["STREAMREC_REDIS_PASSWORD"] == "***" and "secret" not in printed
    assert cmd_config(Namespace(settings=s, json=False)) == 0  # the table (it once failed on int values)
    printed = capsys.readouterr().out
    assert "streamrec settings" in printed and "***" in printed and "secret" not in printed


@pytest.mark.parametrize("url, shown", [
    ("rediss://app:pw@h:1/0", "rediss://app:***@h:1/0"),
    ("redis://:pw@h:1", "redis://:***@h:1"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("s3://key:secret@bucket/models", "s3://key:***@bucket/models"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


# --- pull API token and HTTP binding ------------------------------------------------ #
@pytest.mark.parametrize("headers, ok", [
    ({"Authorization": "Bearer tok-1"}, True),
    ({"authorization": "bearer tok-1"}, True),
    ({"Authorization": "Bearer tok-2"}, False),
    ({"Authorization": "Bearer tok-1x"}, False),
    ({"Authorization": "Basic tok-1"}, False),
    ({"Authorization": "tok-1"}, False),
    ({"Authorization": "Bearer t\u00f6k"}, False),
    ({}, False),
])
def test_bearer_token(headers, ok):
    assert bearer_matches(headers, "tok-1") is ok


def test_http_endpoints_bind_to_loopback_by_default():
    assert Settings().http_host == "127.0.0.1"
    server = HealthServer(Settings().http_host, 0)
    try:
        assert server.address[0] == "127.0.0.1"
    finally:
        server.stop()


# --- registry paths ------------------------------------------------------------------ #
ESCAPES = ["../evil", "..", ".", "", "/etc/passwd", "a/../../b", "a/b", "a\\b", "a\x00b", "ranker\n", " ranker",
           "-rf", ".hidden", "x" * 65, "r\u0430nker", "~root", "C:\\x", "%2e%2e"]


@pytest.mark.parametrize("bad", ESCAPES)
def test_names_and_versions_that_could_escape_the_registry_are_refused(bad, tmp_path):
    with pytest.raises(RegistryError, match="is not allowed"):
        check_name(bad)
    with pytest.raises(RegistryError, match="is not allowed"):
        check_version(bad)
    reg = Registry(tmp_path / "reg")
    src = tmp_path / "w.bin"
    src.write_bytes(b"w")
    with pytest.raises(RegistryError):
        reg.publish(bad, {"model.onnx": src}, kind="dcn", version="v1")
    if bad:  # an empty version means "make a fresh one"
        with pytest.raises(RegistryError):
            reg.publish("ranker", {"model.onnx": src}, kind="dcn", version=bad)
    with pytest.raises(RegistryError):
        reg.publish("ranker", {bad: src}, kind="dcn", version=f"v-{abs(hash(bad))}")
    for call in (lambda: reg.location("ranker", bad), lambda: reg.meta(bad, "v1"), lambda: reg.versions(bad)):
        with pytest.raises(RegistryError):
            call()
    assert not any(p.name not in ("reg", "w.bin", "ranker") for p in tmp_path.rglob("*") if p.parent == tmp_path)


def test_a_tampered_current_pointer_cannot_lead_out_of_the_registry(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = tmp_path / "w.bin"
    src.write_bytes(b"w")
    reg.publish("ranker", {"model.onnx": src}, kind="dcn", version="v1")
    (tmp_path / "reg" / "ranker" / "current.json").write_text(json.dumps({"version": "../../etc", "history": []}))
    with pytest.raises(RegistryError, match="'../../etc' is not allowed"):
        reg.resolve("ranker")


def test_meta_json_cannot_make_the_reader_open_a_file_outside_the_version(tmp_path):
    reg = Registry(tmp_path / "reg")
    src = tmp_path / "w.bin"
    src.write_bytes(b"w")
    reg.publish("ranker", {"model.onnx": src}, kind="dcn", version="v1")
    meta_path = tmp_path / "reg" / "ranker" / "v1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["signatures"] = {"../../../w.bin": {"inputs": [], "outputs": []}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="not one of its files"):
        reg.verify("ranker", "v1")
    meta["signatures"], meta["files"]["../../../w.bin"] = {}, {"sha256": "0" * 64, "bytes": 1}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="incomplete"):
        reg.verify("ranker", "v1")


def test_the_scorer_refuses_an_announcement_whose_uri_is_not_the_announced_version(tmp_path):
    pytest.importorskip("onnxruntime")
    from streamrec.serving.config import ScorerConfig
    from streamrec.serving.models import ModelStore
    from streamrec.serving.ranking import ModelError

    s = Settings(registry_uri=str(tmp_path / "reg"))
    store = ModelStore(s, ScorerConfig.from_settings(s))
    try:
        for uri, name, version in ((str(tmp_path / "reg" / "ranker" / "v2"), "ranker", "v1"),
                                   ("/tmp/elsewhere/other/v1", "ranker", "v1")):
            with pytest.raises(ModelError, match="is not the folder REGISTRY/ranker/v1"):
                store.load(Announcement(name=name, version=version, uri=uri, sha256=""))
        with pytest.raises(RegistryError, match="not allowed"):
            store.load(Announcement(name="../x", version="v1", uri="/r/../x/v1", sha256=""))
    finally:
        store.stop()


def test_sentinels_are_parsed_and_a_malformed_one_is_named():
    from streamrec.security import SecurityError, redis_client, sentinel_addresses

    s = Settings(redis_sentinels="10.0.0.1:26379, sentinel-b:26380,")
    assert sentinel_addresses(s) == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    with pytest.raises(SecurityError, match="STREAMREC_REDIS_SENTINELS: 'nohost' is not HOST:PORT"):
        sentinel_addresses(Settings(redis_sentinels="nohost"))
    with pytest.raises(SecurityError, match="exclude each other"):
        redis_client(Settings(redis_sentinels="a:1", redis_cluster=True))
    client = redis_client(Settings(redis_sentinels="127.0.0.1:1", redis_master_name="shop", redis_url="redis://h:2/3"))
    pool = client.connection_pool  # nothing connects until a command runs
    assert pool.service_name == "shop" and pool.connection_kwargs["db"] == 3
