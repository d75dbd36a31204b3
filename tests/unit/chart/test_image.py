"""The Dockerfile builds the one image the chart runs: pinned base, locked dependencies without dev tools,
non-root, `courier` as the entrypoint and the operator importable as `im_operator`.

No Docker engine here, so these read the Dockerfile; tests/e2e builds it for real where Docker exists.
"""

from __future__ import annotations

import json
import re

from tests.unit.chart.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def instructions(keyword: str) -> list[str]:
    return [i.split(None, 1)[1] for i in INSTRUCTIONS if i.split(None, 1)[0].upper() == keyword]


def test_base_image_is_pinned_to_an_exact_python_3_11_release() -> None:
    (arg,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    image = arg.removeprefix("PYTHON_IMAGE=")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dependencies_come_from_the_lock_file_without_dev_tools() -> None:
    runs = " ".join(instructions("RUN"))
    assert "uv sync --frozen --no-dev --no-install-project" in runs
    assert "uv sync --frozen --no-dev --no-editable" in runs
    makefile_uv = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv is not None
    assert f"ARG UV_VERSION={makefile_uv.group(1)}" in INSTRUCTIONS, "the image and the Makefile use different uv"
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in DOCKERFILE


def test_runs_as_a_non_root_user_with_courier_as_entrypoint() -> None:
    assert instructions("USER") == ["10001:10001"]
    assert INSTRUCTIONS.index("USER 10001:10001") > INSTRUCTIONS.index("FROM ${PYTHON_IMAGE} AS runtime")
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["courier"]
    assert "PATH=/app/.venv/bin:$PATH" in DOCKERFILE


def test_the_operator_is_in_the_image_and_importable() -> None:
    copies = instructions("COPY")
    assert "operator ./operator" in copies
    assert "PYTHONPATH=/app/operator" in DOCKERFILE
    assert (REPO / "operator" / "im_operator" / "__main__.py").exists(), "python -m im_operator needs __main__.py"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".courier", "**/__pycache__", "tests"} <= ignored
    for needed in ("services", "tools", "operator", "pyproject.toml", "uv.lock", "README.md"):
        assert needed not in ignored
