"""An in-memory stand-in for ``im_operator.kube.Kube`` with the API server's optimistic concurrency: every write
bumps a resourceVersion, and a write that names an older one is refused with Conflict."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from im_operator.kube import ApiError, Conflict, NotFound, Ref


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 0
        self.failing: ApiError | None = None  # raised by every call while set
        self.before_write: Callable[[], None] | None = None  # runs once, just before the next write lands

    @staticmethod
    def key(ref: Ref) -> tuple[str, str, str]:
        return (ref.kind, ref.namespace, ref.name)

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        self._fail()
        found = self.objects.get(self.key(ref))
        return copy.deepcopy(found) if found is not None else None

    async def list_objects(self, api_version: str, kind: str, namespace: str, *, selector: str = "") -> list[Any]:
        self._fail()
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items()) if (k, ns) == (kind, namespace)]

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._fail()
        self._interfere()
        if "name" not in manifest["metadata"]:  # generateName
            manifest = {**manifest, "metadata": {**manifest["metadata"], "name": f"generated-{self.version + 1}"}}
        if self.key(Ref.of(manifest)) in self.objects:
            raise Conflict(409, "AlreadyExists", f"{Ref.of(manifest)} already exists")
        return self._store(manifest)

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self._update(manifest)

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self._update(manifest)

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], *, subresource: str = "") -> dict[str, Any]:
        """A JSON merge patch of ``metadata`` (lists replaced whole), refused as Conflict when it names an older
        resourceVersion."""
        current = self.objects.get(self.key(ref))
        if current is None:
            raise NotFound(404, "NotFound", f"{ref} not found")
        merged = copy.deepcopy(current)
        merged["metadata"].update(copy.deepcopy(dict(patch.get("metadata") or {})))
        if "resourceVersion" not in (patch.get("metadata") or {}):
            del merged["metadata"]["resourceVersion"]
        return await self._update(merged)

    def put(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Another writer's change, stored at once."""
        return self._store(manifest)

    async def _update(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._fail()
        self._interfere()
        current = self.objects.get(self.key(Ref.of(manifest)))
        wanted = manifest["metadata"].get("resourceVersion")
        if wanted is not None and (current is None or current["metadata"]["resourceVersion"] != wanted):
            raise Conflict(409, "Conflict", "the object has been modified; please apply your changes again")
        return self._store(manifest)

    def _store(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(dict(manifest))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[self.key(Ref.of(stored))] = stored
        return copy.deepcopy(stored)

    def _fail(self) -> None:
        if self.failing is not None:
            raise self.failing

    def _interfere(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
