"""The embedded mode keeps history, unread counts and files across a restart of the server, and every
acknowledged message across a ``kill -9`` of it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.support.client import Api, unique
from tests.support.server import free_port, run_server
from tests.support.workload import make_pairs, senders, verify, wait_for_acks
from tests.system.conftest import DEV_ENV

PAIRS = 4


async def test_history_unread_counts_and_files_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "durable"
    with run_server(data_dir, DEV_ENV) as first:
        api = Api(first.base_url)
        alice, bob = await api.register("alice"), await api.register("bob")
        cid = await api.direct(alice, bob)
        for i in range(5):
            assert (await api.send(alice, cid, f"kept {i}")).status_code == 201
        await api.http.post(f"/v1/conversations/{cid}/read", json={"seq": 2}, headers=bob.headers)
        stored = await api.upload(alice, b"durable bytes" * 200)
        await api.http.post(
            f"/v1/conversations/{cid}/messages",
            headers=alice.headers,
            json={"client_msg_id": unique("f"), "content": {"type": "file", "file_id": stored["file_id"]}},
        )
        await api.close()
    with run_server(data_dir, DEV_ENV) as second:
        api = Api(second.base_url)
        try:
            bob_again = await api.login(bob.username, bob.password)
            history = (await api.http.get(f"/v1/conversations/{cid}/messages", headers=bob_again.headers)).json()
            assert [m["seq"] for m in history["messages"]] == [1, 2, 3, 4, 5, 6]
            assert history["messages"][0]["content"]["text"] == "kept 0"
            [conv] = (await api.http.get("/v1/conversations", headers=bob_again.headers)).json()["conversations"]
            assert (conv["unread_count"], conv["read_seq"], conv["max_seq"]) == (4, 2, 6)
            redirect = await api.http.get(f"/v1/files/{stored['file_id']}", headers=bob_again.headers)
            assert redirect.status_code == 302
            assert (await api.http.get(redirect.headers["location"])).content == b"durable bytes" * 200
        finally:
            await api.close()


async def test_kill_9_of_courier_dev_amid_sends_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """``courier dev`` commits a message with no outbox row (docs/design.md 3.3): a crash takes only the pushes
    still on their way with it, and the reconnecting clients' sync brings them from SQL. After the restart every
    member holds every acknowledged message once, with seqs 1..N, whatever the senders retried."""
    data_dir, port = tmp_path / "killed", free_port()
    with contextlib.ExitStack() as servers:
        first = servers.enter_context(run_server(data_dir, DEV_ENV, port=port))
        api = Api(first.base_url)
        try:
            pairs = await make_pairs(api, PAIRS)
            async with senders(first.ws_url, pairs):
                await wait_for_acks(pairs, 5)
                before = max(len(pair.acked) for pair in pairs)
                first.process.kill()
                first.process.wait(timeout=30)
                servers.enter_context(run_server(data_dir, DEV_ENV, port=port))
                # Back when every sender got more acks than any had at the kill.
                await wait_for_acks(pairs, before + 5)
            totals = await verify(api, first.ws_url, pairs)
        finally:
            await api.close()
    print(f"\n{totals}")
    assert totals["acked"] >= PAIRS * 10
