"""The chart carries copies of files owned elsewhere (Helm can only read files inside the chart): each copy must
stay byte-identical to its source, so a change there fails here until the chart is re-synced.

Re-sync with:
    cp crds/imcluster.yaml charts/courier/crds/imcluster.yaml
    cp operator/im_operator/rbac.yaml charts/courier/files/operator-rbac.yaml
    rm -f charts/courier/dashboards/*.json; cp dashboards/*.json charts/courier/dashboards/
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.chart.conftest import CHART, REPO

COPIES = [
    (REPO / "crds" / "imcluster.yaml", CHART / "crds" / "imcluster.yaml"),
    (REPO / "operator" / "im_operator" / "rbac.yaml", CHART / "files" / "operator-rbac.yaml"),
]


@pytest.mark.parametrize(("source", "copy"), COPIES, ids=[str(c.relative_to(CHART)) for _, c in COPIES])
def test_chart_copy_is_identical_to_its_source(source: Path, copy: Path) -> None:
    assert source.exists(), f"{source.relative_to(REPO)} is missing"
    assert copy.read_bytes() == source.read_bytes(), f"re-sync: cp {source.relative_to(REPO)} {copy.relative_to(REPO)}"


def test_chart_dashboards_are_exactly_the_repositorys_dashboards() -> None:
    def listing(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}

    source = listing(REPO / "dashboards")
    # Both empty would pass vacuously: the repository's four dashboards must be there to compare.
    assert sorted(source) == ["infrastructure.json", "overview.json", "pipeline.json", "websocket.json"]
    assert listing(CHART / "dashboards") == source, "re-sync: cp dashboards/*.json charts/courier/dashboards/"


def test_crds_directory_holds_only_the_imcluster_crd() -> None:
    # Helm installs everything in crds/ before the templates and never upgrades or deletes it: keep it to the CRD.
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["imcluster.yaml"]
