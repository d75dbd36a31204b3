"""The /v1/files flow over HTTP (httpx ASGITransport), with the metadata in memory and in SQLite:
upload in signed parts, resume, complete, dedup, download and who may see a file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from file_support import DOWNLOAD_TTL_S, MAX_SIZE, PART_SIZE, URL_TTL_S, Harness, payload, sha256

from services.common.errors import NotFound
from services.common.ids import new_id

THREE_PARTS = 2 * PART_SIZE + 100


async def start(
    h: Harness, user: str, data: bytes, *, name: str = "report.pdf", content_type: str = "application/pdf"
) -> httpx.Response:
    body = {"name": name, "size": len(data), "content_type": content_type, "sha256": sha256(data)}
    return await h.client.post("/v1/files/uploads", json=body, headers=h.auth(user))


async def put_part(h: Harness, upload: dict[str, Any], number: int, data: bytes) -> httpx.Response:
    url = next(part["url"] for part in upload["parts"] if part["part_number"] == number)
    chunk = data[(number - 1) * upload["part_size"] : number * upload["part_size"]]
    return await h.client.put(url, content=chunk)


async def upload_file(h: Harness, user: str, data: bytes, **declared: str) -> dict[str, Any]:
    """The whole happy path: start, every part, complete; the completed file's body."""
    started = await start(h, user, data, **declared)
    assert started.status_code == 201, started.text
    upload = started.json()
    for part in upload["parts"]:
        assert (await put_part(h, upload, part["part_number"], data)).status_code == 200
    completed = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert completed.status_code == 200, completed.text
    return dict(completed.json())


async def download(h: Harness, user: str, file_id: str) -> httpx.Response:
    redirect = await h.client.get(f"/v1/files/{file_id}", headers=h.auth(user))
    if redirect.status_code != 302:
        return redirect
    return await h.client.get(redirect.headers["location"])


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


async def test_upload_in_parts_resumes_completes_and_downloads_the_same_bytes(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)

    started = await start(h, user, data, name="Q3 report.pdf")
    assert started.status_code == 201
    upload = started.json()
    assert upload["part_size"] == PART_SIZE
    assert [p["part_number"] for p in upload["parts"]] == [1, 2, 3]
    assert all(p["url"].startswith("/v1/files/blobs/uploads/") for p in upload["parts"])
    expires_at = datetime.fromisoformat(upload["expires_at"])
    assert expires_at == datetime.fromtimestamp(h.clock(), UTC) + timedelta(days=1)

    first = await put_part(h, upload, 1, data)
    assert first.status_code == 200
    assert first.json()["part_number"] == 1
    assert first.headers["etag"] == f'"{first.json()["etag"]}"'
    assert (await put_part(h, upload, 3, data)).status_code == 200

    # The client went away for longer than the part URLs live; it resumes with fresh ones.
    h.clock.advance(URL_TTL_S + 1)
    resumed = await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))
    assert resumed.status_code == 200
    state = resumed.json()
    assert state["uploaded_parts"] == [1, 3]
    assert [p["part_number"] for p in state["parts"]] == [1, 2, 3]
    assert (state["name"], state["size"], state["content_type"]) == ("Q3 report.pdf", THREE_PARTS, "application/pdf")
    assert (await put_part(h, upload, 2, data)).status_code == 403
    assert (await put_part(h, state, 2, data)).status_code == 200

    completed = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert completed.status_code == 200
    file = completed.json()
    assert file == {
        "file_id": file["file_id"],
        "name": "Q3 report.pdf",
        "size": THREE_PARTS,
        "content_type": "application/pdf",
        "sha256": sha256(data),
    }

    redirect = await h.client.get(f"/v1/files/{file['file_id']}", headers=h.auth(user))
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(f"/v1/files/blobs/objects/{sha256(data)}/")
    got = await h.client.get(location)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"Q3 report.pdf\"; filename*=UTF-8''Q3%20report.pdf"
    )
    assert got.headers["x-content-type-options"] == "nosniff"


async def test_completing_twice_returns_the_same_file(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    for part in upload["parts"]:
        await put_part(h, upload, part["part_number"], data)
    complete = f"/v1/files/uploads/{upload['upload_id']}/complete"
    first = await h.client.post(complete, headers=h.auth(user))
    again = await h.client.post(complete, headers=h.auth(user))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()


async def test_complete_lists_the_missing_parts(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    await put_part(h, upload, 2, data)
    response = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert response.json()["error"]["message"] == "missing parts: 1, 3"


async def test_a_stranger_who_knows_the_sha256_and_size_gets_an_upload_not_the_file(h: Harness) -> None:
    alice, mallory, data = new_id(), new_id(), payload(THREE_PARTS)
    original = await upload_file(h, alice, data)

    started = await start(h, mallory, data, name="copy.bin", content_type="application/octet-stream")
    assert started.status_code == 201
    upload = started.json()
    assert "file_id" not in upload
    assert "deduplicated" not in upload
    assert [p["part_number"] for p in upload["parts"]] == [1, 2, 3]
    assert (await download(h, mallory, original["file_id"])).status_code == 404
    # Without the bytes the upload cannot complete into a file.
    completed = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(mallory))
    assert completed.status_code == 400


async def test_stranger_who_uploads_the_same_bytes_shares_the_stored_object(h: Harness) -> None:
    alice, bob, data = new_id(), new_id(), payload(THREE_PARTS)
    original = await upload_file(h, alice, data)
    copy = await upload_file(h, bob, data, name="copy.bin", content_type="application/octet-stream")
    assert copy["file_id"] != original["file_id"]

    got = await download(h, bob, copy["file_id"])
    assert got.content == data
    assert "copy.bin" in got.headers["content-disposition"]
    # One stored object serves both files; Bob's file is his alone.
    assert len(list((h.objects / sha256(data)).iterdir())) == 1
    assert (await download(h, alice, copy["file_id"])).status_code == 404


async def test_the_owner_uploading_the_same_bytes_again_is_deduplicated_without_an_upload(h: Harness) -> None:
    alice, data = new_id(), payload(THREE_PARTS)
    original = await upload_file(h, alice, data)

    started = await start(h, alice, data, name="copy.bin", content_type="application/octet-stream")
    assert started.status_code == 200
    copy = started.json()
    assert copy == {
        "file_id": copy["file_id"],
        "deduplicated": True,
        "name": "copy.bin",
        "size": THREE_PARTS,
        "content_type": "application/octet-stream",
        "sha256": sha256(data),
    }
    assert copy["file_id"] != original["file_id"]
    got = await download(h, alice, copy["file_id"])
    assert got.content == data
    assert "copy.bin" in got.headers["content-disposition"]
    assert got.headers["content-type"] == "application/octet-stream"
    assert len(list((h.objects / sha256(data)).iterdir())) == 1


async def test_a_member_of_a_conversation_the_file_was_shared_in_is_deduplicated(h: Harness) -> None:
    owner, member, outsider = new_id(), new_id(), new_id()
    conversation, other_conversation = new_id(), new_id()
    h.members.add(conversation, owner, member)
    h.members.add(other_conversation, owner, outsider)
    data = payload(THREE_PARTS)
    original = await upload_file(h, owner, data)
    assert (await start(h, member, data)).status_code == 201  # not shared with them yet
    await h.files.shares.attach(original["file_id"], conversation, owner)

    started = await start(h, member, data, name="mine.pdf")
    assert started.status_code == 200
    copy = started.json()
    assert copy["deduplicated"] is True
    assert copy["file_id"] != original["file_id"]
    got = await download(h, member, copy["file_id"])
    assert got.status_code == 200
    assert got.content == data
    assert "mine.pdf" in got.headers["content-disposition"]
    # The copy is the member's own file; the conversation's other members see only what was shared.
    assert (await download(h, owner, copy["file_id"])).status_code == 404
    assert (await start(h, outsider, data)).status_code == 201


async def test_uploads_of_the_same_bytes_in_flight_together_share_one_object(h: Harness) -> None:
    alice, bob, data = new_id(), new_id(), payload(THREE_PARTS)
    uploads = [(user, (await start(h, user, data)).json()) for user in (alice, bob)]
    files = []
    for user, upload in uploads:
        for part in upload["parts"]:
            await put_part(h, upload, part["part_number"], data)
        done = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
        files.append(done.json())
    assert files[0]["file_id"] != files[1]["file_id"]
    assert [(await download(h, u, f["file_id"])).content for u, f in zip((alice, bob), files, strict=True)] == [
        data,
        data,
    ]
    assert len(list((h.objects / sha256(data)).iterdir())) == 1


async def test_stranger_gets_not_found_for_a_file_and_its_info(h: Harness) -> None:
    owner, stranger = new_id(), new_id()
    file = await upload_file(h, owner, payload(100))
    for path in (f"/v1/files/{file['file_id']}", f"/v1/files/{file['file_id']}/info"):
        response = await h.client.get(path, headers=h.auth(stranger))
        assert response.status_code == 404
        assert error_code(response) == "not_found"
    missing = await h.client.get(f"/v1/files/{new_id()}", headers=h.auth(owner))
    assert missing.status_code == 404


async def test_members_of_a_conversation_where_the_file_was_attached_may_download_it(h: Harness) -> None:
    owner, member, outsider = new_id(), new_id(), new_id()
    conversation, other_conversation = new_id(), new_id()
    h.members.add(conversation, owner, member)
    h.members.add(other_conversation, outsider)
    data = payload(THREE_PARTS)
    file = await upload_file(h, owner, data, name="plan.txt", content_type="text/plain")
    assert (await download(h, member, file["file_id"])).status_code == 404

    attached = await h.files.shares.attach(file["file_id"], conversation, owner)
    assert attached == {
        "file_id": file["file_id"],
        "name": "plan.txt",
        "size": THREE_PARTS,
        "content_type": "text/plain",
    }
    assert await h.files.shares.attach(file["file_id"], conversation, owner) == attached

    got = await download(h, member, file["file_id"])
    assert got.status_code == 200
    assert got.content == data
    info = await h.client.get(f"/v1/files/{file['file_id']}/info", headers=h.auth(member))
    assert info.status_code == 200
    assert info.json()["name"] == "plan.txt"
    assert (await download(h, outsider, file["file_id"])).status_code == 404


async def test_a_member_may_forward_a_file_they_can_see_but_a_stranger_may_not(h: Harness) -> None:
    owner, member, stranger = new_id(), new_id(), new_id()
    first, second = new_id(), new_id()
    h.members.add(first, owner, member)
    h.members.add(second, member, stranger)
    file = await upload_file(h, owner, payload(10))
    with pytest.raises(NotFound):
        await h.files.shares.attach(file["file_id"], second, stranger)
    with pytest.raises(NotFound):
        await h.files.shares.attach(new_id(), first, owner)

    await h.files.shares.attach(file["file_id"], first, owner)
    await h.files.shares.attach(file["file_id"], second, member)
    assert (await download(h, stranger, file["file_id"])).status_code == 200


async def test_file_info_gives_the_metadata(h: Harness) -> None:
    user, data = new_id(), payload(10)
    file = await upload_file(h, user, data, name="a.png", content_type="image/png")
    info = await h.client.get(f"/v1/files/{file['file_id']}/info", headers=h.auth(user))
    assert info.status_code == 200
    assert info.json() == {**file, "created_at": info.json()["created_at"]}
    assert datetime.fromisoformat(info.json()["created_at"]) == datetime.fromtimestamp(h.clock(), UTC)


async def test_expired_part_url_is_forbidden(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    h.clock.advance(URL_TTL_S + 1)
    response = await put_part(h, upload, 1, data)
    assert response.status_code == 403
    assert error_code(response) == "forbidden"
    assert "expired" in response.json()["error"]["message"]


async def test_expired_download_url_is_forbidden(h: Harness) -> None:
    user, data = new_id(), payload(100)
    file = await upload_file(h, user, data)
    location = (await h.client.get(f"/v1/files/{file['file_id']}", headers=h.auth(user))).headers["location"]
    h.clock.advance(DOWNLOAD_TTL_S)
    assert (await h.client.get(location)).status_code == 200
    h.clock.advance(1)
    response = await h.client.get(location)
    assert response.status_code == 403
    assert error_code(response) == "forbidden"


def tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{urlencode({**dict(parse_qsl(parts.query)), **changes})}"


async def test_tampered_download_url_is_forbidden(h: Harness) -> None:
    user, data = new_id(), payload(100)
    file = await upload_file(h, user, data)
    location = (await h.client.get(f"/v1/files/{file['file_id']}", headers=h.auth(user))).headers["location"]
    signature = dict(parse_qsl(urlsplit(location).query))["signature"]
    for bad in (
        tamper(location, signature=("0" if signature[0] != "0" else "1") + signature[1:]),
        tamper(location, content_type="text/html"),
        tamper(location, filename="evil.html"),
        tamper(location, expires="9999999999"),
        urlsplit(location).path,
    ):
        response = await h.client.get(bad)
        assert response.status_code == 403, bad
        assert error_code(response) == "forbidden"


async def test_tampered_part_url_is_forbidden(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    url = upload["parts"][0]["url"]
    other_part = url.replace("/parts/1?", "/parts/2?")
    for bad in (tamper(url, signature="0" * 64), other_part, urlsplit(url).path):
        response = await h.client.put(bad, content=data[:PART_SIZE])
        assert response.status_code == 403, bad


async def test_sha256_mismatch_is_rejected_and_the_upload_aborted(h: Harness) -> None:
    user, declared, sent = new_id(), payload(THREE_PARTS), payload(THREE_PARTS)
    upload = (await start(h, user, declared)).json()
    for part in upload["parts"]:
        assert (await put_part(h, upload, part["part_number"], sent)).status_code == 200
    response = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert "sha256 mismatch" in response.json()["error"]["message"]

    gone = await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))
    assert gone.status_code == 404
    assert not (h.objects / sha256(declared)).exists() or not any((h.objects / sha256(declared)).iterdir())
    assert not any((h.objects / ".multipart").iterdir())
    # The bytes were never trusted: the declared hash still deduplicates nothing, even for the uploader.
    assert (await start(h, user, declared)).status_code == 201


async def test_file_larger_than_the_limit_is_payload_too_large(h: Harness) -> None:
    body = {"name": "big.zip", "size": MAX_SIZE + 1, "content_type": "application/zip", "sha256": "0" * 64}
    response = await h.client.post("/v1/files/uploads", json=body, headers=h.auth(new_id()))
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_disallowed_content_type_is_invalid_request(h: Harness) -> None:
    response = await start(h, new_id(), payload(10), name="page.html", content_type="text/html")
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert "content_type" in response.json()["error"]["message"]
    assert (await start(h, new_id(), payload(10), name="a.webp", content_type="image/webp")).status_code == 201


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"sha256": "A" * 64}, 400),
        ({"name": "../etc/passwd"}, 400),
        ({"name": ""}, 400),
        ({"name": "a\x07b"}, 400),
        ({"size": 0}, 400),
        ({"size": "12"}, 422),
        ({"size": True}, 422),
        ({"name": None}, 422),
    ],
)
async def test_bad_declarations_are_invalid_requests(h: Harness, change: dict[str, Any], status: int) -> None:
    body = {"name": "a.txt", "size": 10, "content_type": "text/plain", "sha256": sha256(b"x"), **change}
    response = await h.client.post("/v1/files/uploads", json=body, headers=h.auth(new_id()))
    assert response.status_code == status
    assert error_code(response) == "invalid_request"


async def test_malformed_json_is_an_invalid_request(h: Harness) -> None:
    response = await h.client.post(
        "/v1/files/uploads", content=b"{nope", headers={**h.auth(new_id()), "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_code(response) == "invalid_request"


async def test_part_larger_than_the_part_size_is_payload_too_large(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    url = upload["parts"][0]["url"]
    declared = await h.client.put(url, content=data[: PART_SIZE + 1])
    assert declared.status_code == 413
    assert error_code(declared) == "payload_too_large"

    async def chunked() -> Any:
        yield data[:PART_SIZE]
        yield b"!"

    streamed = await h.client.put(url, content=chunked())
    assert streamed.status_code == 413


async def test_part_of_the_wrong_size_is_invalid_request(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    short = await h.client.put(upload["parts"][0]["url"], content=data[:10])
    assert short.status_code == 400
    assert error_code(short) == "invalid_request"
    last_too_long = await h.client.put(upload["parts"][2]["url"], content=data[:PART_SIZE])
    assert last_too_long.status_code == 400
    state = (await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))).json()
    assert state["uploaded_parts"] == []


async def test_uploading_a_part_again_replaces_it(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    wrong = bytes(reversed(data))
    for part in upload["parts"]:
        await put_part(h, upload, part["part_number"], wrong)
    await put_part(h, upload, 1, data)
    await put_part(h, upload, 2, data)
    await put_part(h, upload, 3, data)
    done = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert done.status_code == 200
    assert (await download(h, user, done.json()["file_id"])).content == data


async def test_another_users_upload_is_not_found(h: Harness) -> None:
    owner, other, data = new_id(), new_id(), payload(THREE_PARTS)
    upload = (await start(h, owner, data)).json()
    for method, path in (("GET", ""), ("POST", "/complete")):
        response = await h.client.request(
            method, f"/v1/files/uploads/{upload['upload_id']}{path}", headers=h.auth(other)
        )
        assert response.status_code == 404
        assert error_code(response) == "not_found"


async def test_requests_without_a_bearer_token_are_unauthorized(h: Harness) -> None:
    for method, path in (
        ("POST", "/v1/files/uploads"),
        ("GET", f"/v1/files/uploads/{new_id()}"),
        ("POST", f"/v1/files/uploads/{new_id()}/complete"),
        ("GET", f"/v1/files/{new_id()}"),
        ("GET", f"/v1/files/{new_id()}/info"),
    ):
        response = await h.client.request(method, path)
        assert response.status_code == 401, path
        assert error_code(response) == "unauthorized"


async def test_uploads_not_completed_within_a_day_are_collected(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    await put_part(h, upload, 1, data)
    completed_file = await upload_file(h, user, payload(50))
    h.clock.advance(24 * 3600)

    now = datetime.fromtimestamp(h.clock(), UTC)
    assert await h.files.collect_garbage(now) == 2
    assert await h.files.collect_garbage(now) == 0
    response = await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))
    assert response.status_code == 404
    assert not any((h.objects / ".multipart").iterdir())
    # Collecting uploads never touches completed files.
    assert (await download(h, user, completed_file["file_id"])).status_code == 200


async def test_expired_upload_accepts_no_parts_and_cannot_complete(h: Harness) -> None:
    user, data = new_id(), payload(100)
    upload = (await start(h, user, data)).json()
    h.clock.advance(24 * 3600)
    fresh = await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))
    assert fresh.status_code == 404
    done = await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))
    assert done.status_code == 404


async def test_completed_upload_reports_its_file_when_resumed(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    upload = (await start(h, user, data)).json()
    for part in upload["parts"]:
        await put_part(h, upload, part["part_number"], data)
    file = (await h.client.post(f"/v1/files/uploads/{upload['upload_id']}/complete", headers=h.auth(user))).json()
    state = (await h.client.get(f"/v1/files/uploads/{upload['upload_id']}", headers=h.auth(user))).json()
    assert state["file_id"] == file["file_id"]
    assert state["uploaded_parts"] == [1, 2, 3]
    assert state["parts"] == []


async def test_download_supports_byte_ranges_and_unicode_names(h: Harness) -> None:
    user, data = new_id(), payload(THREE_PARTS)
    file = await upload_file(h, user, data, name="фото 🎉.png", content_type="image/png")
    location = (await h.client.get(f"/v1/files/{file['file_id']}", headers=h.auth(user))).headers["location"]
    ranged = await h.client.get(location, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]
    disposition = ranged.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="____ _.png"; ')
    assert disposition.endswith("filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE%20%F0%9F%8E%89.png")


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness
