"""Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it: one operator process
reconciles, the others wait until its Lease runs out.

Why a Lease of our own rather than kopf's peering: peering is not an election (operators of equal priority all
freeze, of different priorities the lower ones pause), it needs two more CRDs (KopfPeering, ClusterKopfPeering) and
cluster-wide RBAC for them, and it pauses only kopf's handlers, not the operator's own drift loop. A Lease is the
API the control plane's own controllers elect with: a standby process simply does not start kopf until it holds it.

Expiry is judged by the local clock only (the time this process last saw the Lease's record change), never by
comparing another node's timestamps with ours, so clock skew between nodes cannot cause two leaders. A leader that
cannot renew within ``renew_deadline_s`` (shorter than the Lease's duration) steps down before anyone else may
take over. Every write carries the resourceVersion it read, so two candidates never both win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from im_operator.kube import ApiError, Conflict, Kube, Ref

LEASE_API = "coordination.k8s.io/v1"
log = logging.getLogger("im_operator")


def micro_time() -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.duration_s:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


class LeaderElector:
    """Acquires, renews and releases one Lease for this process (``identity``)."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] = micro_time,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self._clock = clock
        self._now = now
        self._ref = Ref(LEASE_API, "Lease", settings.namespace, settings.name)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_error = ""
        self._renewed_at = 0.0
        self.leading = False

    async def acquire(self) -> None:
        """Return once this process holds the Lease (wait as long as another live process does)."""
        waiting_logged = False
        while not await self.try_acquire_or_renew():
            if not waiting_logged and not self._last_error:  # an error was logged as such
                log.info("standing by: Lease %s/%s is held by another operator", self._ref.namespace, self._ref.name)
                waiting_logged = True
            await asyncio.sleep(self.settings.retry_period_s)
        log.info("leading: holding Lease %s/%s as %s", self._ref.namespace, self._ref.name, self.settings.identity)

    def still_leading(self) -> bool:
        """Whether this process may write now: it holds the Lease and renewed it within the renew deadline. Checked
        before every pass, so a leader that was frozen or cut off past its Lease stops at once when it wakes,
        before its renewal loop notices."""
        return self.leading and self._clock() - self._renewed_at <= self.settings.renew_deadline_s

    async def hold(self) -> None:
        """Renew the Lease every retry period; return when no renewal succeeded for the renew deadline (then
        another process may take over soon, and this one must stop reconciling)."""
        renewed = self._clock()
        while True:
            await asyncio.sleep(self.settings.retry_period_s)
            left = self.settings.renew_deadline_s - (self._clock() - renewed)
            try:
                # An attempt that hangs (a slow API server) must not keep this process leading past the deadline.
                success = left > 0 and await asyncio.wait_for(self.try_acquire_or_renew(), timeout=left)
            except TimeoutError:
                success = False
            if success:
                renewed = self._clock()
            elif self._clock() - renewed > self.settings.renew_deadline_s:
                self.leading = False
                log.error("lost the Lease %s/%s: stepping down", self._ref.namespace, self._ref.name)
                return

    async def release(self) -> None:
        """Give the Lease up at a clean stop, so a standby takes over at once rather than after its duration."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.kube.get(self._ref)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.settings.identity:
                return
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=self._now())
            await self.kube.replace(lease)
        except ApiError as exc:
            log.warning("cannot release the Lease %s/%s: %s", self._ref.namespace, self._ref.name, exc)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this process holds the Lease afterwards."""
        try:
            lease = await self.kube.get(self._ref)
            if lease is None:
                await self.kube.create(self._manifest(None))
            else:
                if not self._may_take(lease):
                    return False
                await self.kube.replace(self._manifest(lease))
        except Conflict:
            return False  # another candidate wrote first: read again next round
        except ApiError as exc:
            if str(exc) != self._last_error:  # once per distinct error, not every retry period
                log.warning("leader election: %s", exc)
                self._last_error = str(exc)
            return False
        self._last_error = ""
        self._renewed_at = self._clock()
        self.leading = True
        return True

    def _may_take(self, lease: dict[str, Any]) -> bool:
        """Ours already, free, or not renewed for its whole duration as this process has been watching it."""
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        if not holder or holder == self.settings.identity:
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.settings.duration_s)
        return self._clock() - self._observed_at > duration

    def _manifest(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        now = self._now()
        spec = (lease or {}).get("spec") or {}
        ours = spec.get("holderIdentity") == self.settings.identity
        metadata: dict[str, Any] = {"name": self._ref.name, "namespace": self._ref.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.settings.identity,
                "leaseDurationSeconds": int(self.settings.duration_s + 0.999),
                "acquireTime": spec.get("acquireTime") if ours else now,
                "renewTime": now,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if ours or lease is None else 1),
            },
        }
