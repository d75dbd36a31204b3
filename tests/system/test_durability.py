"""The embedded mode keeps history, unread counts and files across a restart of the server."""

from __future__ import annotations

from pathlib import Path

from tests.support.client import Api, unique
from tests.support.server import run_server
from tests.system.conftest import DEV_ENV


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
