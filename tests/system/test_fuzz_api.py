"""Schemathesis over the public OpenAPI of a real ``courier dev``: generated requests, valid and not, for
every operation. No answer may be a 5xx, and every answer whose status the schema documents must match
the documented body. Bounded (a fixed number of examples per operation) and derandomized, so CI repeats
the same run; ``COURIER_FUZZ_SEED`` explores another.

The generated path identifiers rarely name anything, so most cases are rewritten to use real ones (a
group the caller belongs to, its seqs, an upload), and some string in a JSON body gets a lone surrogate,
which no JSON encoder Hypothesis uses would produce by itself.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support.server import RunningServer, run_server
from tests.system.conftest import SYSTEM_ENV

EXAMPLES = int(os.environ.get("COURIER_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("COURIER_FUZZ_SEED")
RSS_GROWTH_LIMIT_MIB = 300
PASSWORD = "correct horse battery"
# Calls that would end the caller's own session or account: fuzzed without the caller's token.
WITHOUT_TOKEN = {("POST", "/v1/auth/logout"), ("POST", "/v1/auth/refresh")}


@dataclass
class World:
    """Real things the generated requests can point at."""

    server: RunningServer
    token: str
    ids: dict[str, list[Any]]
    rss_before_mib: float


def _login(http: httpx.Client, name: str) -> dict[str, Any]:
    http.post("/v1/auth/register", json={"username": name, "password": PASSWORD}).raise_for_status()
    answer = http.post("/v1/auth/login", json={"username": name, "password": PASSWORD})
    answer.raise_for_status()
    return dict(answer.json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with run_server(Path(tmp_path_factory.mktemp("courier-fuzz-api")), SYSTEM_ENV) as server:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            owner, peer, other = (_login(http, f"fuzz{n}{os.getpid()}") for n in ("owner", "peer", "other"))
            auth = {"Authorization": f"Bearer {owner['access_token']}"}
            group = http.post(
                "/v1/conversations",
                json={"type": "group", "title": "fuzz", "member_ids": [peer["user_id"], other["user_id"]]},
                headers=auth,
            )
            group.raise_for_status()
            cid = group.json()["conversation_id"]
            for i in range(5):
                sent = http.post(
                    f"/v1/conversations/{cid}/messages",
                    json={"client_msg_id": f"fuzz-{i}", "content": {"type": "text", "text": f"hello {i}"}},
                    headers=auth,
                )
                sent.raise_for_status()
            upload = http.post(
                "/v1/files/uploads",
                json={
                    "name": "fuzz.txt",
                    "size": 5,
                    "content_type": "text/plain",
                    "sha256": hashlib.sha256(b"fuzz\n").hexdigest(),
                },
                headers=auth,
            )
            upload.raise_for_status()
        ids = {
            "conversation_id": [cid],
            "user_id": [owner["user_id"], peer["user_id"], other["user_id"]],
            "seq": [1, 2, 3, 4, 5],
            "upload_id": [upload.json()["upload_id"]],
            "part_number": [1],
        }
        assert server.process is not None
        yield World(server, owner["access_token"], ids, _rss_mib(server.process.pid))


@pytest.fixture(scope="module")
def api_schema(world: World) -> Any:
    return schemathesis.openapi.from_url(f"{world.server.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _with_surrogate(body: Any, rng: random.Random) -> bool:
    """Put a lone surrogate into one string of a JSON body, in place; False when it holds none."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str):
                slots.append((node, key))
            else:
                walk(value)

    walk(body)
    if not slots:
        return False
    node, key = rng.choice(slots)
    node[key] = node[key] + "\ud800"
    return True


def _realistic(case: Any, world: World) -> None:
    """Most cases aim at real things, so the logic behind the 404s is fuzzed too."""
    rng = random.Random(repr((case.method, case.path, case.path_parameters, case.query, case.body, SEED)))
    for name in list(case.path_parameters or {}):
        if name in world.ids and rng.random() < 0.8:
            case.path_parameters[name] = rng.choice(world.ids[name])
    if isinstance(case.body, dict) and rng.random() < 0.2:
        _with_surrogate(case.body, rng)


def _seeded(test: Any) -> Any:
    """The explicit seed of ``COURIER_FUZZ_SEED``; without one the run is derandomized (the same every time)."""
    return seed(int(SEED))(test) if SEED else test


@schema.parametrize()
@_seeded
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_request_gets_a_server_error_or_an_undocumented_body(case: Any, world: World) -> None:
    _realistic(case, world)
    headers = {} if (case.method.upper(), case.path) in WITHOUT_TOKEN else {"Authorization": f"Bearer {world.token}"}
    case.call_and_validate(
        base_url=world.server.base_url,
        headers=headers,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )


def test_the_server_survived_the_fuzzing_with_bounded_memory(world: World) -> None:
    """Runs after the fuzz cases of this module: the process is alive, ready, and did not balloon."""
    process = world.server.process
    assert process is not None and process.poll() is None, world.server.log()[-4000:]
    assert httpx.get(f"{world.server.base_url}/readyz", timeout=10).status_code == 200
    assert "Traceback" not in world.server.log(), world.server.log()[-4000:]
    grown = _rss_mib(process.pid) - world.rss_before_mib
    assert grown < RSS_GROWTH_LIMIT_MIB, f"RSS grew by {grown:.0f} MiB during the fuzzing"
