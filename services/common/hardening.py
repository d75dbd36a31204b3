"""The secrets a process starts with, settled before anything is built from its settings.

Outside dev mode every secret must be set, and be real (``Settings.refuse_insecure_defaults``). In dev
mode a secret left at the built-in placeholder is replaced by one derived from the data directory's own
random secret, made on first start (``<data_dir>/secret``, mode 0600) and kept, so nobody can forge a
token with the published placeholder and tokens still verify after a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from pathlib import Path

from services.common.settings import DEV_SECRET, MIN_SECRET_CHARS, Settings

log = logging.getLogger("courier.hardening")

SECRET_FILE = "secret"  # noqa: S105 - a file name


def harden(settings: Settings) -> Settings:
    """The settings to start with: checked (prod), or with the placeholder secrets replaced (dev)."""
    if settings.mode != "dev":
        settings.refuse_insecure_defaults()
        return settings
    if not _loopback(settings.host):
        log.warning(
            "dev mode is listening on %s, beyond loopback: anyone who can reach it can register and use this "
            "development server. Serve real users with `courier run` (COURIER_MODE=prod) behind the gateway",
            settings.host,
        )
    placeholders = [settings.secret, settings.internal_token, *settings.jwt.keys.values()]
    if DEV_SECRET not in placeholders:
        return settings  # every secret was set explicitly
    master = data_dir_secret(settings.data_dir)

    def own(value: str, purpose: str) -> str:
        if value != DEV_SECRET:
            return value
        # One secret per purpose: the internal token travels in headers, the signing keys never do.
        return hmac.new(master, purpose.encode(), hashlib.sha256).hexdigest()

    keys = {kid: own(key, f"jwt:{kid}") for kid, key in settings.jwt.keys.items()}
    return settings.model_copy(
        update={
            "secret": own(settings.secret, "secret"),
            "internal_token": own(settings.internal_token, "internal-token"),
            "jwt": settings.jwt.model_copy(update={"keys": keys}),
        }
    )


def data_dir_secret(data_dir: Path) -> bytes:
    """The random secret of ``data_dir``: made (mode 0600) on first use, read back ever after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s could be read by other users (mode %o); made it 0600", path, mode)
        path.chmod(0o600)
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise SystemExit(f"{path} does not hold a secret; delete it to make a new one (every login then ends)")
    return value.encode()


def _create_secret(path: Path) -> None:
    """Written aside, then linked into place: a reader never sees half a file, and of two processes
    starting at once on one data directory the first link wins and both read the same secret."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
