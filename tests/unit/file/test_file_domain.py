"""The file service's pure rules: declarations, part layouts, download names."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidRequest, PayloadTooLarge
from services.file.domain import MAX_PARTS, FileSpec, PartLayout, content_disposition

SHA = "ab" * 32
ALLOWED = ["image/*", "text/plain", "application/pdf"]


def parse(**overrides: object) -> FileSpec:
    fields: dict[str, object] = {"name": "photo.png", "size": 10, "content_type": "image/png", "sha256": SHA}
    fields.update(overrides)
    return FileSpec.parse(**fields, max_size=100, allowed_content_types=ALLOWED)  # type: ignore[arg-type]


def test_valid_declaration_is_accepted() -> None:
    assert parse() == FileSpec("photo.png", 10, "image/png", SHA)


@pytest.mark.parametrize("size", [0, -1])
def test_empty_or_negative_size_is_invalid(size: int) -> None:
    with pytest.raises(InvalidRequest, match="size"):
        parse(size=size)


def test_size_above_the_limit_is_payload_too_large() -> None:
    assert parse(size=100).size == 100
    with pytest.raises(PayloadTooLarge):
        parse(size=101)


@pytest.mark.parametrize("sha", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, ""])
def test_sha256_must_be_64_lowercase_hex(sha: str) -> None:
    with pytest.raises(InvalidRequest, match="sha256"):
        parse(sha256=sha)


@pytest.mark.parametrize(
    "name",
    ["", "x" * 256, "a/b.txt", "a\\b.txt", "..", ".", "bad\x00name", "new\nline", "tab\there", "gpj\u202eexe.txt"],
)
def test_unsafe_or_oversized_names_are_invalid(name: str) -> None:
    with pytest.raises(InvalidRequest, match="name"):
        parse(name=name)


@pytest.mark.parametrize("name", ["x" * 255, "résumé 2026.pdf", "фото.png", "a..b", "emoji 🎉.png"])
def test_ordinary_names_are_valid(name: str) -> None:
    assert parse(name=name).name == name


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("image/png", "image/png"),
        ("IMAGE/JPEG", "image/jpeg"),
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ('text/plain;charset="utf-8"', 'text/plain; charset="utf-8"'),
        ("application/pdf", "application/pdf"),
    ],
)
def test_allowed_content_types_are_normalized(given: str, stored: str) -> None:
    assert parse(content_type=given).content_type == stored


@pytest.mark.parametrize(
    "content_type", ["text/html", "application/zip", "imagex/png", "image", "image/", "", "text/plain; charset"]
)
def test_other_or_malformed_content_types_are_invalid(content_type: str) -> None:
    with pytest.raises(InvalidRequest, match="content_type"):
        parse(content_type=content_type)


def test_content_type_with_header_injection_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse(content_type="text/plain\r\nSet-Cookie: a=b")


def test_star_slash_star_allows_every_media_type() -> None:
    spec = FileSpec.parse(
        name="a", size=1, content_type="video/mp4", sha256=SHA, max_size=1, allowed_content_types=["*/*"]
    )
    assert spec.content_type == "video/mp4"


def test_layout_gives_every_part_the_part_size_but_the_last() -> None:
    layout = PartLayout(size=2 * 1024 + 100, part_size=1024)
    assert layout.count == 3
    assert [layout.size_of(n) for n in layout.numbers] == [1024, 1024, 100]


def test_layout_of_an_exact_multiple_has_a_full_last_part() -> None:
    layout = PartLayout(size=2048, part_size=1024)
    assert [layout.size_of(n) for n in layout.numbers] == [1024, 1024]


@pytest.mark.parametrize("part_number", [0, 4, -1])
def test_part_numbers_outside_the_layout_are_invalid(part_number: int) -> None:
    with pytest.raises(InvalidRequest, match="part_number"):
        PartLayout(size=3000, part_size=1024).size_of(part_number)


def test_layout_needing_more_parts_than_s3_allows_is_invalid() -> None:
    assert PartLayout(size=MAX_PARTS, part_size=1).count == MAX_PARTS
    with pytest.raises(InvalidRequest, match="parts"):
        PartLayout(size=MAX_PARTS + 1, part_size=1)


def test_layout_problems_name_missing_then_wrongly_sized_parts() -> None:
    layout = PartLayout(size=2500, part_size=1024)
    assert layout.problems({1: 1024, 2: 1024, 3: 452}) is None
    assert layout.problems({2: 1024}) == "missing parts: 1, 3"
    assert layout.problems({1: 1024, 2: 1000, 3: 452}) == "parts of the wrong size: 2"


def test_content_disposition_gives_ascii_fallback_and_utf8_name() -> None:
    assert content_disposition("report.pdf") == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    assert content_disposition('résumé "final".pdf') == (
        "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
    )
