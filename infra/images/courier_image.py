"""The Courier image: every service and the operator, built from this checkout's Dockerfile on the local base."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import imagelib

DEFAULT_REF = "courier:0.1.0"
# What the Dockerfile copies (.dockerignore keeps the rest out); the build context is made of these only.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "README.md", "services", "tools", "operator")


def ensure_courier_image(ref: str = DEFAULT_REF) -> str:
    """Build the image from this checkout as `ref`; Docker's layer cache makes a rebuild of unchanged code quick."""
    with tempfile.TemporaryDirectory(prefix="courier-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        ignored = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache")
        for name in CONTEXT:
            path = imagelib.REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=ignored)
            else:
                shutil.copy2(path, src / name)
        with imagelib.build_context(src) as ctx:
            imagelib.build(ref, ctx, name="courier")
    return ref
