"""Shared by the CasaKubeSpawner tests: a facility with real key files, schema checks, a secret scan."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from traitlets.config import Config

from casa_hub.facility import Facility
from shared_data import REFERENCE

KUBERNETES_VERSION = "1.30.0"
SIGNING_KEY = b"casa-pool-signing-key\x00" + os.urandom(24)
MACAROON_SECRET = os.urandom(48)
TRAEFIK_CRDS = REFERENCE / "traefik-crds-v1.yml"


def secret_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path)


def facility_config(tmp_path: Path, domain: str = "coffea.casa") -> Config:
    cfg = Config()
    cfg.Facility.domain = domain
    cfg.Facility.trust_domain = "cms-af.example.org"
    cfg.Facility.signing_key_file = secret_file(tmp_path / "POOL", SIGNING_KEY)
    cfg.Facility.macaroon_secret_file = secret_file(tmp_path / "macaroon", base64.b64encode(MACAROON_SECRET) + b"\n")
    cfg.Facility.xcache_site = "T2_US_Test"
    # usernames such as DNs contain spaces, which a macaroon's name caveat cannot hold
    cfg.Facility.xcache_token_name = "{slug}"
    cfg.Facility.collector_host = "collector.example.org:9619"
    cfg.Facility.xcache_host = "root://xcache.example.org:1094"
    return cfg


def make_facility(tmp_path: Path, domain: str = "coffea.casa") -> Facility:
    return Facility(config=facility_config(tmp_path, domain))


def master_secret_needles() -> list[bytes]:
    """The master secrets as they could leak: raw, base64 (standard and url-safe), hex."""
    needles = []
    for secret in (SIGNING_KEY, MACAROON_SECRET, base64.b64encode(MACAROON_SECRET)):
        needles += [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret), secret.hex().encode()]
    return needles


def assert_no_master_secret(obj) -> None:
    blob = json.dumps(obj, sort_keys=True).encode()
    # also the decoded values of every Secret's data, in case one were double-encoded
    decoded = [base64.b64decode(v) for v in _secret_values(obj)]
    for haystack in [blob, *decoded]:
        for needle in master_secret_needles():
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
