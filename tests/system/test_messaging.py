"""PROTOCOL.md message scenarios over real WebSockets against a running all-in-one server."""

from __future__ import annotations

import asyncio

from tests.support.client import Api, Device, unique
from tests.support.server import RunningServer


async def test_three_devices_of_two_users_receive_every_message_once_in_seq_order(
    server: RunningServer, api: Api
) -> None:
    alice_phone = await api.register("alice", device_id="phone")
    alice_laptop = await api.device(alice_phone, "laptop")
    bob = await api.register("bob")
    cid = await api.direct(alice_phone, bob)
    devices = [await Device.connect(server.ws_url, u) for u in (alice_phone, alice_laptop, bob)]
    try:
        own: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
        for i in range(30):
            index = i % 3
            ack = await devices[index].send_text(cid, f"message {i}")
            assert ack["type"] == "send_ack", ack
            own[index].add(ack["seq"])
        for index, device in enumerate(devices):
            expected = set(range(1, 31)) - own[index]
            await device.wait_until(lambda d=device, e=expected: set(d.messages(cid)) >= e)  # type: ignore[misc]
            pushed = [f["seq"] for f in device.frames if f["type"] == "message" and f["conversation_id"] == cid]
            assert pushed == sorted(pushed), "pushes arrive in seq order"
            assert set(pushed) == expected, "each device gets every message it did not send itself"
            assert len(pushed) == len(set(pushed)), "no duplicates without a retransmit"
    finally:
        for device in devices:
            await device.close()


async def test_sends_written_without_waiting_are_committed_and_answered_in_the_order_written(
    server: RunningServer, api: Api
) -> None:
    # A client that does not wait for each send_ack: its sends are in flight together, and each conversation's
    # seqs follow the order they were written in; the answers come in that order, a failed send's in its place.
    alice, bob, carol = await api.register("alice"), await api.register("bob"), await api.register("carol")
    with_bob, with_carol = await api.direct(alice, bob), await api.direct(alice, carol)
    sender, receiver = await Device.connect(server.ws_url, alice), await Device.connect(server.ws_url, bob)
    try:
        written = []
        for i in range(40):
            cid = (with_bob, with_carol)[i % 2] if i != 17 else "not-a-conversation"
            frame = {"type": "send", "id": f"s{i}", "conversation_id": cid, "client_msg_id": unique("m")}
            written.append({**frame, "content": {"type": "text", "text": f"message {i}"}})
        for frame in written:
            await sender.send(frame)
        await sender.wait_until(lambda: len([f for f in sender.frames if f["type"] in ("send_ack", "error")]) == 40)

        answers = [f for f in sender.frames if f["type"] in ("send_ack", "error")]
        assert [f["ref"] for f in answers] == [f"s{i}" for i in range(40)]
        assert answers[17]["type"] == "error" and answers[17]["code"] == "not_found"
        to_bob = [f["seq"] for f in answers if f.get("conversation_id") == with_bob]
        to_carol = [f["seq"] for f in answers if f.get("conversation_id") == with_carol]
        assert to_bob == list(range(1, 21)) and to_carol == list(range(1, 20))
        await receiver.wait_until(lambda: len(receiver.messages(with_bob)) == 20)
        texts = [receiver.messages(with_bob)[seq]["content"]["text"] for seq in range(1, 21)]
        assert texts == [f"message {i}" for i in range(0, 40, 2)]
    finally:
        await sender.close()
        await receiver.close()


async def test_sender_other_devices_get_their_own_messages(server: RunningServer, api: Api) -> None:
    phone = await api.register("multi", device_id="phone")
    tablet = await api.device(phone, "tablet")
    peer = await api.register("peer")
    cid = await api.direct(phone, peer)
    d_phone, d_tablet = await Device.connect(server.ws_url, phone), await Device.connect(server.ws_url, tablet)
    try:
        ack = await d_phone.send_text(cid, "from my phone")
        frame = await d_tablet.wait_for(lambda f: f["type"] == "message" and f["seq"] == ack["seq"])
        assert frame["sender_id"] == phone.user_id and frame["sender_device_id"] == "phone"
        assert frame["content"] == {"type": "text", "text": "from my phone"}
    finally:
        await d_phone.close()
        await d_tablet.close()


async def test_device_that_does_not_ack_gets_the_message_again_marked_redelivered(
    server: RunningServer, api: Api
) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    sender, receiver = await Device.connect(server.ws_url, alice), await Device.connect(server.ws_url, bob)
    try:
        ack = await sender.send_text(cid, "are you there?")
        first = await receiver.wait_for(lambda f: f["type"] == "message" and f["seq"] == ack["seq"])
        assert not first.get("redelivered")
        again = await receiver.wait_for(lambda f: f["type"] == "message" and f.get("redelivered") is True)
        assert again["seq"] == ack["seq"] and again["message_id"] == first["message_id"]
        assert again.get("redelivered") is True
    finally:
        await sender.close()
        await receiver.close()


async def test_device_offline_during_200_messages_gets_all_by_paginated_sync(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    sender = await Device.connect(server.ws_url, alice)
    try:
        for i in range(200):
            ack = await sender.send_text(cid, f"while you were away {i}")
            assert ack["seq"] == i + 1
    finally:
        await sender.close()
    returning = await Device.connect(server.ws_url, bob)
    try:
        cursor, pages, received = 0, 0, []
        while True:
            result = await returning.request(
                {"type": "sync", "cursors": {cid: cursor}, "limit": 50}, answer="sync_result"
            )
            assert result["type"] == "sync_result", result
            [conv] = [c for c in result["conversations"] if c["conversation_id"] == cid]
            received += [m["seq"] for m in conv["messages"]]
            cursor, pages = conv["messages"][-1]["seq"], pages + 1
            if not conv["has_more"]:
                break
        assert received == list(range(1, 201))
        assert pages == 4
    finally:
        await returning.close()


async def test_resent_client_msg_id_returns_the_original_seq(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    device = await Device.connect(server.ws_url, alice)
    try:
        first = await device.send_text(cid, "once", client_msg_id="retry-me")
        await device.send_text(cid, "something else")
        again = await device.send_text(cid, "once", client_msg_id="retry-me")
        assert (again["seq"], again["message_id"]) == (first["seq"], first["message_id"])
        http_again = await api.send(alice, cid, "once", client_msg_id="retry-me")
        assert http_again.status_code == 200 and http_again.json()["seq"] == first["seq"]
        history = (await api.http.get(f"/v1/conversations/{cid}/messages", headers=alice.headers)).json()
        assert [m["seq"] for m in history["messages"]] == [1, 2]
    finally:
        await device.close()


async def test_non_member_gets_not_found_over_http_and_websocket(server: RunningServer, api: Api) -> None:
    alice, bob, mallory = await api.register("alice"), await api.register("bob"), await api.register("mallory")
    cid = await api.direct(alice, bob)
    assert (await api.http.get(f"/v1/conversations/{cid}", headers=mallory.headers)).status_code == 404
    answer = await api.send(mallory, cid, "let me in")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    history = await api.http.get(f"/v1/conversations/{cid}/messages", headers=mallory.headers)
    assert history.status_code == 404
    device = await Device.connect(server.ws_url, mallory)
    try:
        error = await device.send_text(cid, "let me in")
        assert error["type"] == "error" and error["code"] == "not_found"
    finally:
        await device.close()


async def test_malformed_frame_gets_an_error_frame_and_the_socket_stays_usable(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    device = await Device.connect(server.ws_url, alice)
    try:
        await device.ws.send("{this is not json")
        error = await device.wait_for(lambda f: f["type"] == "error")
        assert error["code"] == "invalid_request" and error["ref"] is None
        bad = await device.request(
            {"type": "send", "conversation_id": cid, "client_msg_id": "x", "content": {"type": "hologram"}},
            answer="send_ack",
        )
        assert bad["type"] == "error" and bad["code"] == "invalid_request" and "hologram" in bad["message"]
        unknown = await device.request({"type": "teleport"}, answer="never")
        assert unknown["code"] == "invalid_request"
        await device.ws.send(b"\x00binary")
        await device.wait_for(lambda f: f["type"] == "error" and "binary" in f["message"])
        ok = await device.send_text(cid, "still here")
        assert ok["type"] == "send_ack"
        pong = await device.request({"type": "ping"}, answer="pong")
        assert pong["type"] == "pong"
    finally:
        await device.close()


async def test_read_receipts_and_unread_counts(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    d_alice, d_bob = await Device.connect(server.ws_url, alice), await Device.connect(server.ws_url, bob)
    try:
        for i in range(3):
            await d_alice.send_text(cid, f"m{i}")
        # The list is served from the inbox, written by the fan-out just before it pushes: once bob's
        # device has seq 3, his inbox has it too.
        await d_bob.wait_for(lambda f: f["type"] == "message" and f["seq"] == 3)
        listed = (await api.http.get("/v1/conversations", headers=bob.headers)).json()["conversations"]
        [conv] = [c for c in listed if c["conversation_id"] == cid]
        assert (conv["max_seq"], conv["unread_count"]) == (3, 3)
        assert conv["last_message"]["content"]["text"] == "m2"
        await d_bob.send({"type": "read", "conversation_id": cid, "seq": 2})
        receipt = await d_alice.wait_for(lambda f: f["type"] == "read_receipt")
        assert receipt == {"type": "read_receipt", "conversation_id": cid, "user_id": bob.user_id, "seq": 2}
        listed = (await api.http.get("/v1/conversations", headers=bob.headers)).json()["conversations"]
        assert [c["unread_count"] for c in listed if c["conversation_id"] == cid] == [1]
        answer = await api.http.post(f"/v1/conversations/{cid}/read", json={"seq": 3}, headers=bob.headers)
        assert answer.status_code == 204
        listed = (await api.http.get("/v1/conversations", headers=bob.headers)).json()["conversations"]
        assert [c["unread_count"] for c in listed if c["conversation_id"] == cid] == [0]
    finally:
        await d_alice.close()
        await d_bob.close()


async def test_recall_pushes_a_recalled_frame_and_takes_its_own_seq(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    d_bob = await Device.connect(server.ws_url, bob)
    try:
        sent = (await api.send(alice, cid, "oops")).json()
        answer = await api.http.post(f"/v1/conversations/{cid}/messages/{sent['seq']}/recall", headers=alice.headers)
        assert answer.status_code == 200 and answer.json()["recalled"] is True
        frame = await d_bob.wait_for(lambda f: f["type"] == "recalled")
        assert (frame["seq"], frame["event_seq"], frame["by"]) == (sent["seq"], sent["seq"] + 1, alice.user_id)
        forbidden = await api.http.post(f"/v1/conversations/{cid}/messages/{sent['seq']}/recall", headers=bob.headers)
        assert forbidden.status_code == 200  # already recalled: idempotent, same outcome
        other = (await api.send(alice, cid, "keep")).json()
        denied = await api.http.post(f"/v1/conversations/{cid}/messages/{other['seq']}/recall", headers=bob.headers)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        history = (await api.http.get(f"/v1/conversations/{cid}/messages", headers=bob.headers)).json()["messages"]
        assert history[0]["recalled"] is True and "text" not in history[0]["content"]
        assert history[1]["content"] == {"type": "recall", "target_seq": sent["seq"]}
    finally:
        await d_bob.close()


async def test_typing_is_relayed_to_the_other_members_only(server: RunningServer, api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    d_alice, d_bob = await Device.connect(server.ws_url, alice), await Device.connect(server.ws_url, bob)
    try:
        await d_alice.send({"type": "typing", "conversation_id": cid, "state": "start"})
        frame = await d_bob.wait_for(lambda f: f["type"] == "typing")
        assert frame == {"type": "typing", "conversation_id": cid, "user_id": alice.user_id, "state": "start"}
        await d_alice.request({"type": "ping"}, answer="pong")
        assert not [f for f in d_alice.frames if f["type"] == "typing"]
    finally:
        await d_alice.close()
        await d_bob.close()


async def test_call_signalling_is_relayed_to_all_of_the_peers_devices(server: RunningServer, api: Api) -> None:
    caller = await api.register("caller")
    callee_phone = await api.register("callee", device_id="phone")
    callee_desk = await api.device(callee_phone, "desk")
    cid = await api.direct(caller, callee_phone)
    d_caller = await Device.connect(server.ws_url, caller)
    d_phone, d_desk = (
        await Device.connect(server.ws_url, callee_phone),
        await Device.connect(server.ws_url, callee_desk),
    )
    try:
        call_id = unique("call")
        await d_caller.send({"type": "call", "call_id": call_id, "conversation_id": cid, "action": "invite"})
        for device in (d_phone, d_desk):
            invite = await device.wait_for(lambda f: f["type"] == "call" and f["action"] == "invite")
            assert (invite["call_id"], invite["from"]) == (call_id, caller.user_id)
        await d_desk.send(
            {"type": "call", "call_id": call_id, "conversation_id": cid, "action": "answer", "sdp": "v=0 answer"}
        )
        answer = await d_caller.wait_for(lambda f: f["type"] == "call" and f["action"] == "answer")
        assert answer["sdp"] == "v=0 answer" and answer["from"] == callee_phone.user_id
        await d_phone.wait_for(lambda f: f["type"] == "call" and f["action"] == "answer")  # stops ringing
        await d_caller.send(
            {
                "type": "call",
                "call_id": call_id,
                "conversation_id": cid,
                "action": "ice",
                "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
            }
        )
        ice = await d_desk.wait_for(lambda f: f["type"] == "call" and f["action"] == "ice")
        assert ice["candidate"]["candidate"].startswith("candidate:1")
        await d_caller.send({"type": "call", "call_id": call_id, "conversation_id": cid, "action": "hangup"})
        await d_phone.wait_for(lambda f: f["type"] == "call" and f["action"] == "hangup")
    finally:
        for device in (d_caller, d_phone, d_desk):
            await device.close()


async def test_same_device_reconnecting_replaces_the_old_socket_with_4009(server: RunningServer, api: Api) -> None:
    alice = await api.register("alice")
    first = await Device.connect(server.ws_url, alice)
    second = await Device.connect(server.ws_url, alice)
    try:
        await asyncio.wait_for(first.closed.wait(), 30)
        assert first.close_code == 4009
        assert (await second.request({"type": "ping"}, answer="pong"))["type"] == "pong"
    finally:
        await first.close()
        await second.close()


async def test_bad_token_closes_the_socket_with_4001(server: RunningServer, api: Api) -> None:
    alice = await api.register("alice")
    alice.access_token = "not-a-token"
    device = await Device.connect(server.ws_url, alice)
    await asyncio.wait_for(device.closed.wait(), 30)
    assert device.close_code == 4001
    assert device.frames[0]["code"] == "unauthorized"


async def test_presence_subscription_reports_online_and_offline(server: RunningServer, api: Api) -> None:
    watcher, watched = await api.register("watcher"), await api.register("watched")
    d_watcher = await Device.connect(server.ws_url, watcher)
    try:
        await d_watcher.send({"type": "presence_subscribe", "user_ids": [watched.user_id]})
        current = await d_watcher.wait_for(lambda f: f["type"] == "presence" and f["user_id"] == watched.user_id)
        assert current["online"] is False
        d_watched = await Device.connect(server.ws_url, watched)
        await d_watcher.wait_for(
            lambda f: f["type"] == "presence" and f["user_id"] == watched.user_id and f["online"] is True
        )
        status = (await api.http.get(f"/v1/presence?user_ids={watched.user_id}", headers=watcher.headers)).json()
        assert status["presence"][0]["online"] is True
        seen_before = len(d_watcher.frames)
        await d_watched.close()
        await d_watcher.wait_until(
            lambda: any(
                f["type"] == "presence" and f["user_id"] == watched.user_id and f["online"] is False
                for f in d_watcher.frames[seen_before:]
            )
        )
        [offline] = [f for f in d_watcher.frames[seen_before:] if f["type"] == "presence"]
        assert offline["last_seen"] is not None
    finally:
        await d_watcher.close()


async def test_group_membership_changes_are_pushed(server: RunningServer, api: Api) -> None:
    owner, member, newcomer = await api.register("owner"), await api.register("member"), await api.register("new")
    cid = await api.group(owner, member, title="team")
    d_member = await Device.connect(server.ws_url, member)
    try:
        added = await api.http.post(
            f"/v1/conversations/{cid}/members", json={"user_ids": [newcomer.user_id]}, headers=owner.headers
        )
        assert added.status_code == 200
        frame = await d_member.wait_for(lambda f: f["type"] == "member_added" and f["user_id"] == newcomer.user_id)
        assert frame["by"] == owner.user_id
        denied = await api.http.delete(f"/v1/conversations/{cid}/members/{owner.user_id}", headers=member.headers)
        assert denied.status_code == 403
        left = await api.http.delete(f"/v1/conversations/{cid}/members/{newcomer.user_id}", headers=newcomer.headers)
        assert left.status_code == 204
        await d_member.wait_for(lambda f: f["type"] == "member_removed" and f["user_id"] == newcomer.user_id)
        gone = await api.send(newcomer, cid, "am I still here?")
        assert gone.status_code == 404
    finally:
        await d_member.close()
