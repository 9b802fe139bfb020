"""The local stack's pure helpers."""

import subprocess
import sys
import time

from streamrec.deploy.localstack import _exclusive, new_cluster_id


def test_cluster_ids_never_start_with_a_dash_which_the_storage_tool_would_read_as_an_option():
    ids = [new_cluster_id() for _ in range(5000)]  # about 78 of 5,000 would start with "-" by chance
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)


def test_a_second_installer_waits_for_the_first(tmp_path):
    # `make test` runs two pytest workers; on a fresh clone both may fetch Kafka's jars or call apt-get.
    lock = tmp_path / ".install.lock"
    child = [sys.executable, "-c", "import sys; from pathlib import Path\n"
             "from streamrec.deploy.localstack import _exclusive\n"
             "print('waiting', flush=True)\n"
             "with _exclusive(Path(sys.argv[1])): print('installing', flush=True)", str(lock)]
    with _exclusive(lock):
        proc = subprocess.Popen(child, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        assert proc.poll() is None  # held back while this process holds the lock
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "installing" and proc.returncode == 0


def test_the_brokers_jvm_options_come_from_the_settings(tmp_path):
    from streamrec.deploy.localstack import KafkaService
    from streamrec.settings import Settings

    def java(**changes) -> list[str]:
        command = KafkaService(Settings(home=str(tmp_path), **changes)).command()
        return command[:command.index("-cp")]

    assert "-XX:TieredStopAtLevel=1" in java()  # the laptop default: C1 only
    assert not [o for o in java(kafka_jvm_options="") if "Tiered" in o]  # empty: the JVM's own defaults
    options = java(kafka_jvm_options="-XX:+UseStringDeduplication -Xss1m")
    assert options[options.index("-XX:+UseStringDeduplication") + 1] == "-Xss1m"  # split on spaces, in order
