"""Shared by the CasaKubeSpawner tests: schema checks and a scan for the master secrets."""

from __future__ import annotations

import base64
import json

import jsonschema
import kubernetes_validate
import yaml

from tests.facilities import MasterSecrets
from tests.paths import REFERENCE
from tests.secret_scan import master_secret_forms

KUBERNETES_VERSION = "1.30.0"
TRAEFIK_CRDS = REFERENCE / "traefik-crds-v1.yml"


def assert_no_master_secret(obj, master: MasterSecrets) -> None:
    blob = json.dumps(obj, sort_keys=True).encode()
    # also the decoded values of every Secret's data, in case one were double-encoded
    decoded = [base64.b64decode(v) for v in _secret_values(obj)]
    for haystack in [blob, *decoded]:
        for needle in set().union(*master_secret_forms(master).values()):
            assert needle not in haystack, "a master secret reached a user-facing object"


def _secret_values(obj):
    if isinstance(obj, dict):
        if obj.get("kind") == "Secret":
            yield from (obj.get("data") or {}).values()
        for value in obj.values():
            yield from _secret_values(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _secret_values(item)


def validate_kubernetes(obj: dict) -> None:
    """Kubernetes' own OpenAPI schema for the object's kind (strict: unknown fields fail)."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def ingress_route_tcp_schema(version: str = "v1alpha1") -> dict:
    for doc in yaml.safe_load_all(TRAEFIK_CRDS.read_text()):
        if doc and doc["metadata"]["name"] == "ingressroutetcps.traefik.io":
            for v in doc["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no IngressRouteTCP {version} schema in {TRAEFIK_CRDS}")


def validate_ingress_route_tcp(obj: dict) -> None:
    schema = ingress_route_tcp_schema(obj["apiVersion"].split("/")[1])
    jsonschema.validate(obj, schema)
    # the CRD schema leaves metadata open: check it as ObjectMeta
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBERNETES_VERSION, strict=True
    )


def unknown_fields(obj, schema, where="") -> list[str]:
    """Fields of ``obj`` that ``schema`` does not declare (CRD schemas do not forbid them; Traefik ignores them)."""
    found = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key not in schema["properties"]:
                found.append(f"{where}.{key}")
            else:
                found += unknown_fields(value, schema["properties"][key], f"{where}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{where}[{i}]")
    return found
