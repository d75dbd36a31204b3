"""The real-server harness: each backing server is up on loopback and really answers with the published addresses.

Uses only the servers' own clients (redis-cli, mariadb, psql, Kafka's tool classes) and plain HTTP, so it checks
the harness itself rather than Courier's adapters.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.infra import cli_module, ensure_infra, read_infra, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def infra() -> dict[str, Any]:
    return ensure_infra()


def service(infra: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = infra["services"][name]
    assert entry["running"], f"{name} is not running; see {entry['log']}"
    return entry


def sh(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def kafka_tool(infra: dict[str, Any], main_class: str, *args: str, stdin: str | None = None) -> str:
    kafka = service(infra, "kafka")
    cmd = ["java", "-Xmx256m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", kafka["classpath"]]
    proc = subprocess.run(
        [*cmd, main_class, *args], capture_output=True, text=True, timeout=120, input=stdin, check=False
    )
    assert proc.returncode == 0, f"{main_class} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def test_redis_answers_ping_and_stores_a_key(infra: dict[str, Any]) -> None:
    redis = service(infra, "redis")
    base = ["redis-cli", "-h", redis["host"], "-p", str(redis["port"])]
    key = unique("courier:harness")

    assert sh([*base, "PING"]).strip() == "PONG"
    assert sh([*base, "SET", key, "hello", "EX", "60"]).strip() == "OK"
    assert sh([*base, "GET", key]).strip() == "hello"
    assert redis["url"] == f"redis://127.0.0.1:{redis['port']}/0"


def test_mariadb_lets_courier_create_write_and_read_a_table(infra: dict[str, Any]) -> None:
    db = service(infra, "mariadb")
    table = unique("harness")
    client = [
        "mariadb", "--no-defaults", "-h", db["host"], "-P", str(db["port"]), "--protocol=TCP",
        "-u", db["user"], "-N", "-B", db["database"], "-e",
    ]  # fmt: skip
    env = {"MYSQL_PWD": db["password"]}

    assert sh([*client, "SELECT 1"], env=env).strip() == "1"
    sql = f"CREATE TABLE {table} (id INT PRIMARY KEY, body VARCHAR(64)); INSERT INTO {table} VALUES (1, 'hi');"
    sh([*client, sql], env=env)
    assert sh([*client, f"SELECT body FROM {table} WHERE id = 1"], env=env).strip() == "hi"
    sh([*client, f"DROP TABLE {table}"], env=env)
    assert db["url"] == f"mysql+asyncmy://courier:courier@127.0.0.1:{db['port']}/courier"


def test_postgres_lets_courier_create_write_and_read_a_table(infra: dict[str, Any]) -> None:
    db = service(infra, "postgres")
    table = unique("harness")
    client = [
        "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", db["host"], "-p", str(db["port"]),
        "-U", db["user"], "-d", db["database"], "-c",
    ]  # fmt: skip
    env = {"PGPASSWORD": db["password"]}

    assert sh([*client, "SELECT 1"], env=env).strip() == "1"
    sh([*client, f"CREATE TABLE {table} (id INT PRIMARY KEY, body TEXT)"], env=env)
    sh([*client, f"INSERT INTO {table} VALUES (1, 'hi')"], env=env)
    assert sh([*client, f"SELECT body FROM {table} WHERE id = 1"], env=env).strip() == "hi"
    sh([*client, f"DROP TABLE {table}"], env=env)
    assert db["url"] == f"postgresql+asyncpg://courier:courier@127.0.0.1:{db['port']}/courier"


def test_kafka_creates_a_topic_and_round_trips_a_record(infra: dict[str, Any]) -> None:
    bootstrap = service(infra, "kafka")["bootstrap_servers"]
    topic = unique("courier.harness")
    value = unique("record")

    kafka_tool(
        infra, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap,
        "--create", "--topic", topic, "--partitions", "1", "--replication-factor", "1",
    )  # fmt: skip
    listed = kafka_tool(infra, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap, "--list")
    assert topic in listed.split()

    kafka_tool(
        infra, "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", bootstrap, "--topic", topic,
        stdin=value + "\n",
    )  # fmt: skip
    consumed = kafka_tool(
        infra, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", bootstrap,
        "--topic", topic, "--from-beginning", "--max-messages", "1", "--timeout-ms", "60000",
        "--group", unique("harness-group"),
    )  # fmt: skip
    assert consumed.split() == [value]

    kafka_tool(
        infra, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap, "--delete", "--topic", topic
    )


def test_kafka_broker_does_not_auto_create_topics(infra: dict[str, Any]) -> None:
    bootstrap = service(infra, "kafka")["bootstrap_servers"]

    described = kafka_tool(
        infra, "org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", bootstrap,
        "--describe", "--entity-type", "brokers", "--entity-name", "1", "--all",
    )  # fmt: skip

    assert "auto.create.topics.enable=false" in described


def test_minio_is_ready_and_accepts_the_published_credentials(infra: dict[str, Any]) -> None:
    minio = service(infra, "minio")
    cli = cli_module()
    key = unique("harness") + ".txt"
    bucket = minio["bucket"]

    assert cli.http_get_status(minio["port"], "/minio/health/ready") == 200
    status, listing = cli.s3_request("GET", "/")
    assert status == 200, listing
    assert f"<Name>{bucket}</Name>".encode() in listing
    assert cli.s3_request("PUT", f"/{bucket}/{key}", body=b"hello s3")[0] == 200
    assert cli.s3_request("GET", f"/{bucket}/{key}") == (200, b"hello s3")
    assert cli.s3_request("DELETE", f"/{bucket}/{key}")[0] == 204


def test_every_server_listens_on_loopback_only(infra: dict[str, Any]) -> None:
    pids = {name: service(infra, name)["pid"] for name in infra["services"]}
    listening = listeners_by_pid(set(pids.values()))

    for name, pid in pids.items():
        addresses = listening.get(pid, set())
        assert addresses, f"{name} (pid {pid}) has no listening TCP socket"
        # MinIO always adds a listener on [::1] beside the one asked for (upstream: working as intended);
        # that is still loopback. Nothing may listen on a wildcard or an outside address.
        assert all(ipaddress.ip_address(host).is_loopback for host, _ in addresses), (name, addresses)
        assert ("127.0.0.1", service(infra, name)["port"]) in addresses, (name, addresses)


def test_env_prints_the_addresses_written_to_infra_json(infra: dict[str, Any]) -> None:
    proc = run_cli("env")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    port = {name: entry["port"] for name, entry in infra["services"].items()}

    assert proc.returncode == 0
    assert exports == infra["env"]
    assert exports["COURIER_TEST_REDIS_URL"] == f"redis://127.0.0.1:{port['redis']}/0"
    assert exports["COURIER_TEST_MYSQL_URL"] == f"mysql+asyncmy://courier:courier@127.0.0.1:{port['mariadb']}/courier"
    assert exports["COURIER_TEST_POSTGRES_URL"] == (
        f"postgresql+asyncpg://courier:courier@127.0.0.1:{port['postgres']}/courier"
    )
    assert exports["COURIER_TEST_KAFKA"] == f"127.0.0.1:{port['kafka']}"
    assert exports["COURIER_TEST_S3_ENDPOINT"] == f"127.0.0.1:{port['minio']}"
    assert exports["COURIER_TEST_S3_ACCESS_KEY"]
    assert exports["COURIER_TEST_S3_SECRET_KEY"]


def test_ports_are_the_documented_ones_plus_the_offset(infra: dict[str, Any]) -> None:
    offset = int(os.environ.get("COURIER_INFRA_PORT_OFFSET", "0"))
    documented = {"redis": 16379, "mariadb": 13306, "postgres": 15432, "kafka": 19092, "minio": 19000}

    assert {name: entry["port"] - offset for name, entry in infra["services"].items()} == documented


def test_second_up_leaves_the_running_servers_alone(infra: dict[str, Any]) -> None:
    before = {name: entry["pid"] for name, entry in infra["services"].items()}

    again = ensure_infra()

    assert {name: entry["pid"] for name, entry in again["services"].items()} == before
    assert read_infra()["services"]["kafka"]["cluster_id"] == infra["services"]["kafka"]["cluster_id"]


def test_status_reports_every_server_healthy(infra: dict[str, Any]) -> None:
    proc = run_cli("status")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in infra["services"]:
        assert any(line.split()[1:3] == [name, "healthy"] for line in proc.stdout.splitlines()), proc.stdout


def listeners_by_pid(pids: set[int]) -> dict[int, set[tuple[str, int]]]:
    """Listening TCP sockets of each process (and its children), read from /proc like `ss -ltnp` does."""
    owners: dict[str, int] = {}
    for root in pids:
        for pid in [root, *descendants(root)]:
            fd_dir = Path(f"/proc/{pid}/fd")
            for fd in fd_dir.iterdir() if fd_dir.exists() else []:
                try:
                    target = fd.readlink().as_posix()
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners[target[8:-1]] = root
    found: dict[int, set[tuple[str, int]]] = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owners:  # 0A = LISTEN
                continue
            host_hex, port_hex = local.split(":")
            found.setdefault(owners[inode], set()).add((decode_host(host_hex, width), int(port_hex, 16)))
    return found


def decode_host(host_hex: str, width: int) -> str:
    """Text form of a /proc/net/tcp* address; an IPv4-mapped IPv6 listener reads as its IPv4 address."""
    raw = bytes.fromhex(host_hex)
    # Each 32-bit word of the address is stored in host (little-endian) byte order.
    address = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4)))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def descendants(pid: int) -> list[int]:
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        children = [int(c) for c in children_file.read_text().split()]
    except OSError:
        return []
    return [c for child in children for c in (child, *descendants(child))]
