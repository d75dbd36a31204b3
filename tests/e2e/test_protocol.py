"""The protocol end to end through the gateway's NodePort of a real kind cluster: accounts, direct and group messages
over WebSockets with ACKs, sync after a reconnect, and a file through the managed S3 server's presigned URLs."""

from __future__ import annotations

import hashlib

from tests.e2e.conftest import KindCluster
from tests.support.client import Api, Device, User


def ws_url(cluster: KindCluster) -> str:
    return cluster.url.replace("http://", "ws://", 1) + "/v1/ws"


async def connect(cluster: KindCluster, user: User) -> Device:
    return await Device.connect(ws_url(cluster), user)


async def ack_everything(device: Device, cid: str) -> None:
    for seq in sorted(device.messages(cid)):
        await device.send({"type": "ack", "conversation_id": cid, "seq": seq})


async def test_direct_and_group_messages_arrive_once_in_order_with_acks(kind_cluster: KindCluster, api: Api) -> None:
    alice, bob, carol = await api.register("alice"), await api.register("bob"), await api.register("carol")
    direct = await api.direct(alice, bob)
    group = await api.group(alice, bob, carol, title="e2e")
    devices = {name: await connect(kind_cluster, user) for name, user in (("a", alice), ("b", bob), ("c", carol))}
    try:
        for i in range(10):
            ack = await devices["a"].send_text(direct, f"direct {i}")
            assert ack["type"] == "send_ack" and ack["seq"] == i + 1, ack
        for i, sender in enumerate("abcabc"):
            ack = await devices[sender].send_text(group, f"group {i}")
            assert ack["type"] == "send_ack", ack
        await devices["b"].wait_until(lambda: set(devices["b"].messages(direct)) == set(range(1, 11)))
        for name, device in devices.items():
            own = {f["seq"] for f in device.frames if f.get("type") == "send_ack" and f.get("conversation_id") == group}
            expected = set(range(1, 7)) - own
            await device.wait_until(lambda d=device, e=expected: set(d.messages(group)) >= e)  # type: ignore[misc]
            pushed = [f["seq"] for f in device.frames if f["type"] == "message" and f["conversation_id"] == group]
            assert pushed == sorted(set(pushed)), f"{name}: once each, in seq order: {pushed}"
        for device in devices.values():
            await ack_everything(device, direct)
            await ack_everything(device, group)
        texts = [devices["b"].messages(direct)[seq]["content"]["text"] for seq in range(1, 11)]
        assert texts == [f"direct {i}" for i in range(10)]
    finally:
        for device in devices.values():
            await device.close()


async def test_a_device_that_reconnects_syncs_what_it_missed(kind_cluster: KindCluster, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    sender, receiver = await connect(kind_cluster, alice), await connect(kind_cluster, bob)
    try:
        for i in range(5):
            await sender.send_text(cid, f"before {i}")
        await receiver.wait_until(lambda: set(receiver.messages(cid)) == set(range(1, 6)))
        await ack_everything(receiver, cid)
        await receiver.close()
        for i in range(20):
            ack = await sender.send_text(cid, f"while away {i}")
            assert ack["seq"] == 6 + i
    finally:
        await sender.close()
    back = await connect(kind_cluster, bob)
    try:
        result = await back.request({"type": "sync", "cursors": {cid: 5}, "limit": 50}, answer="sync_result")
        assert result["type"] == "sync_result", result
        [conversation] = [c for c in result["conversations"] if c["conversation_id"] == cid]
        assert [m["seq"] for m in conversation["messages"]] == list(range(6, 26))
        assert [m["content"]["text"] for m in conversation["messages"]] == [f"while away {i}" for i in range(20)]
        assert conversation["has_more"] is False
    finally:
        await back.close()


async def test_a_file_goes_up_and_down_through_the_managed_s3_server(kind_cluster: KindCluster, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: one part
    done = await api.upload(alice, data, name="e2e.bin", content_type="application/octet-stream")
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["size"] == len(data)
    sent = await api.http.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "e2e-file", "content": {"type": "file", "file_id": done["file_id"]}},
    )
    assert sent.status_code == 201, sent.text
    redirect = await api.http.get(f"/v1/files/{done['file_id']}", headers=bob.headers)
    assert redirect.status_code == 302, redirect.text
    location = redirect.headers["location"]
    assert location.startswith(f"http://127.0.0.1:{kind_cluster.s3_port}/"), location
    downloaded = await api.http.get(location)
    assert downloaded.status_code == 200 and downloaded.content == data
