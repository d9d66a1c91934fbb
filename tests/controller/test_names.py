"""The controller's enums against the CRD schema (pure: reads the manifests, no cluster)."""

from pathlib import Path

import yaml

from graybaggage_controller import names as n
from graybaggage_controller.plan import Verb

CRD = Path(__file__).resolve().parents[2] / "controller" / "deploy" / "crds" / "grayreleases.graybaggage.io.yaml"


def _phase_enum() -> list[str]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == n.VERSION)
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return status["properties"]["phase"]["enum"]


def test_phases_are_the_crd_enum():
    assert [p.value for p in n.Phase] == _phase_enum()
    assert n.PHASES == tuple(_phase_enum())


def test_enums_are_their_strings():
    # written into status / logs / events as plain strings, compared with what the API server returns
    import json
    assert n.Phase.ROLLING_BACK == "RollingBack" and str(n.Phase.ROLLING_BACK) == "RollingBack"
    assert f"{n.Phase.PAUSED}" == "Paused" and json.dumps({"p": n.Phase.PAUSED}) == '{"p": "Paused"}'
    assert [str(v) for v in Verb] == ["table", "create", "update", "delete", "patch", "jsonpatch", "patch-release"]
