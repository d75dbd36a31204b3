"""Accounts, users, files, presence and ICE servers through the running server."""

from __future__ import annotations

import hashlib

from tests.support.client import Api, Device, unique
from tests.support.server import RunningServer


async def test_register_login_refresh_rotation_and_logout(server: RunningServer, api: Api) -> None:
    username = unique("acct")
    created = await api.http.post(
        "/v1/auth/register", json={"username": username, "password": "long enough pw", "display_name": "Acct"}
    )
    assert created.status_code == 201 and created.json()["display_name"] == "Acct"
    taken = await api.http.post("/v1/auth/register", json={"username": username, "password": "long enough pw"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "conflict"
    weak = await api.http.post("/v1/auth/register", json={"username": unique("w"), "password": "short"})
    assert weak.status_code in (400, 422) and weak.json()["error"]["code"] == "invalid_request"
    wrong = await api.http.post("/v1/auth/login", json={"username": username, "password": "wrong password"})
    assert wrong.status_code == 401
    user = await api.login(username, "long enough pw", device_id="d1")
    me = (await api.http.get("/v1/users/me", headers=user.headers)).json()
    assert me == {"user_id": user.user_id, "username": username, "display_name": "Acct"}
    rotated = await api.http.post("/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert rotated.status_code == 200
    new_pair = rotated.json()
    reused = await api.http.post("/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401
    # reuse of a rotated token revokes the device's session: the newest token is dead too
    assert (
        await api.http.post("/v1/auth/refresh", json={"refresh_token": new_pair["refresh_token"]})
    ).status_code == 401
    again = await api.login(username, "long enough pw", device_id="d1")
    assert (await api.http.post("/v1/auth/logout", headers=again.headers)).status_code == 204
    assert (await api.http.post("/v1/auth/refresh", json={"refresh_token": again.refresh_token})).status_code == 401


async def test_user_lookup_by_id_and_prefix(server: RunningServer, api: Api) -> None:
    user = await api.register("lookup")
    found = (await api.http.get(f"/v1/users/{user.user_id}", headers=user.headers)).json()
    assert found["username"] == user.username
    listed = (await api.http.get(f"/v1/users?prefix={user.username[:-2]}&limit=5", headers=user.headers)).json()
    assert user.username in [u["username"] for u in listed["users"]]
    assert (await api.http.get("/v1/users/nobody", headers=user.headers)).status_code == 404


async def test_file_upload_resume_share_download_and_dedup(server: RunningServer, api: Api) -> None:
    alice, bob, eve = await api.register("alice"), await api.register("bob"), await api.register("eve")
    cid = await api.direct(alice, bob)
    size = server.part_size
    data = (bytes(range(256)) * (2 * size // 256 + 1))[: 2 * size + 256]  # three parts, the last short
    digest = hashlib.sha256(data).hexdigest()
    created = (
        await api.http.post(
            "/v1/files/uploads",
            json={"name": "bytes.bin", "size": len(data), "content_type": "application/octet-stream", "sha256": digest},
            headers=alice.headers,
        )
    ).json()
    assert [p["part_number"] for p in created["parts"]] == [1, 2, 3]
    first = created["parts"][0]
    assert (await api.http.put(first["url"], content=data[:size])).status_code == 200
    resumed = (await api.http.get(f"/v1/files/uploads/{created['upload_id']}", headers=alice.headers)).json()
    assert resumed["uploaded_parts"] == [1]
    for part in resumed["parts"][1:]:
        n = part["part_number"]
        assert (await api.http.put(part["url"], content=data[(n - 1) * size : n * size])).status_code == 200
    done = (await api.http.post(f"/v1/files/uploads/{created['upload_id']}/complete", headers=alice.headers)).json()
    file_id = done["file_id"]
    assert done["sha256"] == digest and done["size"] == len(data)

    assert (await api.http.get(f"/v1/files/{file_id}", headers=bob.headers)).status_code == 404
    sent = await api.http.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": unique("f"), "content": {"type": "file", "file_id": file_id}},
    )
    assert sent.status_code == 201 and sent.json()["content"]["name"] == "bytes.bin"
    redirect = await api.http.get(f"/v1/files/{file_id}", headers=bob.headers)
    assert redirect.status_code == 302
    downloaded = await api.http.get(redirect.headers["location"])
    assert downloaded.status_code == 200 and downloaded.content == data
    assert (await api.http.get(f"/v1/files/{file_id}", headers=eve.headers)).status_code == 404

    declared = {"name": "copy.bin", "size": len(data), "content_type": "application/octet-stream", "sha256": digest}
    by_member = await api.http.post("/v1/files/uploads", json=declared, headers=bob.headers)
    assert by_member.status_code == 200 and by_member.json()["deduplicated"] is True
    # knowing the hash is not enough: a stranger must upload the bytes
    by_stranger = await api.http.post("/v1/files/uploads", json=declared, headers=eve.headers)
    assert by_stranger.status_code == 201 and "upload_id" in by_stranger.json()


async def test_file_size_and_type_checks(server: RunningServer, api: Api) -> None:
    user = await api.register("files")
    huge = await api.http.post(
        "/v1/files/uploads",
        json={"name": "big.iso", "size": 10**12, "content_type": "application/octet-stream", "sha256": "0" * 64},
        headers=user.headers,
    )
    assert huge.status_code == 413
    exe = await api.http.post(
        "/v1/files/uploads",
        json={"name": "x.exe", "size": 10, "content_type": "application/x-msdownload", "sha256": "0" * 64},
        headers=user.headers,
    )
    assert exe.status_code == 400 and exe.json()["error"]["code"] == "invalid_request"


async def test_ice_servers_and_presence_http(server: RunningServer, api: Api) -> None:
    user = await api.register("rtc")
    ice = await api.http.get("/v1/rtc/ice-servers", headers=user.headers)
    assert ice.status_code == 200 and "ice_servers" in ice.json() and "ttl" in ice.json()
    device = await Device.connect(server.ws_url, user)
    try:
        await device.request({"type": "ping"}, answer="pong")
        status = (await api.http.get(f"/v1/presence?user_ids={user.user_id}", headers=user.headers)).json()
        assert status["presence"] == [
            {"user_id": user.user_id, "online": True, "last_seen": status["presence"][0]["last_seen"]}
        ]
    finally:
        await device.close()
