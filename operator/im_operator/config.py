"""The operator process's own settings, from COURIER_OPERATOR_* environment variables (command-line flags of
``python -m im_operator`` override them)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COURIER_OPERATOR_", extra="ignore")

    namespaces: str = Field(
        "", description="Comma-separated namespaces to watch; empty watches every namespace (cluster-wide)."
    )
    default_image: str = Field(
        "", description="The Courier image for IMClusters whose spec.image is empty (the chart sets its own image)."
    )
    backend_images: dict[str, str] = Field(
        default_factory=dict,
        description="Default images of the managed backends by key (redis, kafka, objectStore, mysql, mariadb, "
        'postgresql), as JSON: {"redis": "my-registry/redis:7.4"}. Keys not given keep the upstream images; an '
        "IMCluster's managed.image still wins and managed.version replaces the tag.",
    )
    drift_interval_s: float = Field(
        300.0, gt=0, description="How often every IMCluster gets a full pass even when nothing was seen to change."
    )
    retry_delay_s: float = Field(
        10.0, gt=0, description="First delay of kopf's retry while an IMCluster is not ready yet; doubles per retry."
    )
    max_retry_delay_s: float = Field(
        300.0, gt=0, description="The longest delay between retries of one IMCluster (the doubling stops there)."
    )
    rollout_deadline_s: float = Field(
        600.0,
        gt=0,
        description="A Deployment or StatefulSet whose rollout has not finished for this long turns Degraded.",
    )
    leader_election: bool = Field(
        True, description="Reconcile only while holding a coordination.k8s.io Lease (run several replicas)."
    )
    lease_name: str = Field("courier-operator", min_length=1, description="Name of the leader election Lease.")
    lease_namespace: str = Field(
        "", description="Namespace of the Lease; empty: POD_NAMESPACE, else the first watched namespace, else default."
    )
    lease_duration_s: float = Field(15.0, gt=0, description="How long a Lease not renewed stays the holder's.")
    lease_renew_deadline_s: float = Field(10.0, gt=0, description="A leader that cannot renew this long steps down.")
    lease_retry_period_s: float = Field(2.0, gt=0, description="How often the Lease is renewed, or tried by a standby.")
    liveness: str = Field("", description="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz; empty: none.")
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: any free port)."
    )
    metrics_host: str = Field(
        "0.0.0.0",  # noqa: S104 - scraped by Prometheus from outside the pod
        description="Address the /metrics endpoint binds (127.0.0.1 for local runs and tests).",
    )

    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]

    def retry_delay(self, retry: int) -> float:
        """Exponential backoff of a not-ready IMCluster's retries: the first delay, doubled per retry, capped."""
        delay: float = self.retry_delay_s * 2.0 ** min(retry, 32)
        return min(delay, self.max_retry_delay_s)

    def lease_namespace_or_default(self) -> str:
        """Where the Lease lives: the operator's own namespace in a pod (POD_NAMESPACE, set by the chart)."""
        watched = self.namespace_list()
        return self.lease_namespace or os.environ.get("POD_NAMESPACE", "") or (watched[0] if watched else "default")
