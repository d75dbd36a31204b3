"""One real ``courier dev`` process shared by the system tests, driven over real sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.client import Api
from tests.support.server import RunningServer, run_server, run_stack

# Generous limits so tests sharing the server never trip them; the rate-limit tests start their own.
# Rate limits no test trips by accident; a test of the limits sets its own.
ROOMY_LIMITS = {
    "COURIER_LIMITS__GLOBAL__RATE": "100000",
    "COURIER_LIMITS__GLOBAL__BURST": "200000",
    "COURIER_LIMITS__IP__RATE": "100000",
    "COURIER_LIMITS__IP__BURST": "200000",
    "COURIER_LIMITS__USER__RATE": "100000",
    "COURIER_LIMITS__USER__BURST": "200000",
}
SYSTEM_ENV = {
    "COURIER_ACK_TIMEOUT_S": "1.5",
    "COURIER_MAX_REDELIVERIES": "3",
    "COURIER_DELIVERY__RETRANSMIT_TICK_S": "0.2",
    **ROOMY_LIMITS,
}
# Small parts exercise multipart uploads on the local store; S3 needs parts of at least 5 MiB.
DEV_ENV = {**SYSTEM_ENV, "COURIER_FILE__PART_SIZE": "1024"}


@pytest.fixture(scope="session", params=["dev", "up"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Every scenario runs against ``courier dev`` and against the distributed ``make up`` stack
    (real MariaDB, Redis, Kafka, MinIO; two delivery nodes behind the gateway)."""
    with dev_or_up(request.param, tmp_path_factory, dev_env=DEV_ENV, up_env=SYSTEM_ENV) as running:
        yield running


@contextlib.contextmanager
def dev_or_up(
    kind: str, tmp_path_factory: pytest.TempPathFactory, *, dev_env: dict[str, str], up_env: dict[str, str]
) -> Iterator[RunningServer]:
    """A ``courier dev`` of its own (``kind`` "dev") or the ``make up`` stack with these settings."""
    if kind == "dev":
        with run_server(Path(tmp_path_factory.mktemp("courier-system")), dev_env) as running:
            yield running
    else:
        with run_stack(up_env) as running:
            yield running


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[Api]:
    client = Api(server.base_url)
    yield client
    await client.close()
