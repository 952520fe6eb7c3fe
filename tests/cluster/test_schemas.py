"""Every manifest in cluster/ validates offline against its schema, and the schemas are strict enough to
catch the usual mistakes (a misspelt key, a number where Kubernetes wants a string).

Core kinds use the strict schemas bundled with kubernetes-validate; KubeRay's RayJob and RayService use
the CRD subset in tests/data/crds; the VM launcher uses the schema Ray itself ships.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.cluster.manifests import (CLUSTER, CRD_SCHEMAS, CRDS, KUBERNETES_VERSION, crd_validator, load_manifests,
                                     of_kind)

MANIFESTS = load_manifests()


def validation_errors(obj: dict) -> list[str]:
    """One line per schema violation, `path: message`; [] when the object is valid."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        errors = crd_validator(*key).iter_errors(obj)
        return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}"]
    return []


def test_manifests_found():
    kinds = sorted({m.kind for m in MANIFESTS})
    assert kinds == ["ConfigMap", "CronJob", "RayJob", "RayService", "Role", "RoleBinding", "ServiceAccount"], kinds
    # the nightly RayJob (inside the ConfigMap) and the index build
    assert len(of_kind("RayJob")) == 2


@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_manifest_matches_its_schema(manifest):
    assert validation_errors(manifest.obj) == [], f"{manifest} does not validate"


def test_every_kind_has_a_schema():
    """No silent pass: a kind with neither a bundled Kubernetes schema nor a CRD schema is an error."""
    for m in MANIFESTS:
        if (m.obj["apiVersion"], m.kind) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(m.obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:  # pragma: no cover - the failure path
            pytest.fail(f"{m}: {e.message}; add its CRD schema to tests/data/crds")


def _first(kind: str) -> dict:
    return copy.deepcopy(of_kind(kind)[0].obj)


def _break_worker_group_key(obj: dict) -> None:
    group = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")


def _break_ray_start_params(obj: dict) -> None:
    obj["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _break_container_key(obj: dict) -> None:
    obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}


def _break_submission_mode(obj: dict) -> None:
    obj["spec"]["submissionMode"] = "K8sMode"


def _break_cronjob(obj: dict) -> None:
    obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccount_name"] = "x"


def _break_role(obj: dict) -> None:
    obj["rules"][0]["verb"] = obj["rules"][0].pop("verbs")


@pytest.mark.parametrize("kind, breakage, where", [
    ("RayJob", _break_worker_group_key, "minReplica"),
    ("RayService", _break_ray_start_params, "rayStartParams.num-cpus"),
    ("RayJob", _break_container_key, "resource"),
    ("RayJob", _break_submission_mode, "submissionMode"),
    ("CronJob", _break_cronjob, "serviceAccount_name"),
    ("Role", _break_role, "verb"),
])
def test_schemas_reject_typical_mistakes(kind, breakage, where):
    obj = _first(kind)
    breakage(obj)
    errors = validation_errors(obj)
    assert errors and any(where in e for e in errors), errors


def test_crd_schemas_are_valid_json_schema():
    for path in sorted(CRDS.glob("*.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def ray_launcher_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # located, not imported
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def test_vm_launcher_matches_ray_schema():
    config = yaml.safe_load((CLUSTER / "aws" / "ray-cluster.yaml").read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(ray_launcher_schema()).iter_errors(config)]
    assert errors == []


def test_ray_schema_rejects_a_misspelt_launcher_key():
    config = yaml.safe_load((CLUSTER / "aws" / "ray-cluster.yaml").read_text())
    config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    assert not jsonschema.Draft7Validator(ray_launcher_schema()).is_valid(config)
