"""Every object CasaKubeSpawner builds, checked against the real schemas and for leaks."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casa_hub import bundle as b
from casa_hub.names import SLUG_MAX_LENGTH, user_slug
from casa_hub.plan import plan_session
from casa_spawner.kube import objects as ko
from casa_spawner.kube import CasaKubeSpawner
from tests.casa_kube_helpers import (
    TRAEFIK_CRDS,
    assert_no_master_secret,
    ingress_route_tcp_schema,
    unknown_fields,
    validate_ingress_route_tcp,
    validate_kubernetes,
)
from tests.fake_kube.spawners import make_spawner, reset_kubespawner
from tests.test_names import TRICKY

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
OWNER = ko.owner_reference("jupyter-alice", "5f0c8b9e-0000-4000-8000-000000000001")
USERNAMES = [u for u, _ in TRICKY]


def plan_for(facility, username, access_token=None):
    return plan_session(facility, username, facility.issue_bundle(username, access_token=access_token))


def test_traefik_crds_are_found_beside_the_checkout():
    assert TRAEFIK_CRDS.is_file(), f"expected Traefik's CRDs at {TRAEFIK_CRDS} (shared/ beside the checkout, or $CASA_TEST_SHARED)"


@pytest.mark.parametrize("username", USERNAMES)
def test_every_object_validates_for_tricky_usernames(facility, master_secrets, username):
    plan = plan_for(facility, username)
    opts = ko.KubeSessionOptions()
    objects = ko.session_objects(plan, opts, [OWNER])
    assert [o["kind"] for o in objects] == ["Secret", "Secret", "Service", "IngressRouteTCP"]
    for obj in objects:
        name = obj["metadata"]["name"]
        assert DNS_1035.match(name) and len(name) <= 63, name
        for key, value in obj["metadata"]["labels"].items():
            assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)
        if obj["kind"] == "IngressRouteTCP":
            validate_ingress_route_tcp(obj)
            assert unknown_fields(obj, ingress_route_tcp_schema()) == []
        else:
            validate_kubernetes(obj)
        assert_no_master_secret(obj, master_secrets)
    assert len(plan.names.slug) <= SLUG_MAX_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_object_names_are_valid_for_any_username(username):
    names = ko.object_names(user_slug(username))
    for name in (names.secret, names.scheduler_secret, names.service, names.route):
        assert DNS_1035.match(name) and len(name) <= 63, name


def test_invalid_objects_are_refused_by_the_same_checks(facility):
    """The checks above can fail: a bad port or a misspelt field is caught."""
    plan = plan_for(facility, "alice")
    service = ko.scheduler_service(plan, ko.KubeSessionOptions(), [OWNER])
    service["spec"]["ports"][0]["port"] = "not-a-port"
    with pytest.raises(Exception):
        validate_kubernetes(service)
    route = ko.ingress_route_tcp(plan, ko.KubeSessionOptions(), [OWNER])
    route["spec"]["tls"]["passthrough"] = "yes"
    with pytest.raises(Exception):
        validate_ingress_route_tcp(route)
    route = ko.ingress_route_tcp(plan, ko.KubeSessionOptions(), [OWNER])
    route["spec"]["routes"][0]["servces"] = route["spec"]["routes"][0].pop("services")
    assert unknown_fields(route, ingress_route_tcp_schema()) == [".spec.routes[0].servces"]


def test_route_sends_the_users_sni_to_the_service_with_tls_passthrough(facility):
    plan = plan_for(facility, "Alice")
    opts = ko.KubeSessionOptions(route_entry_points=("dask", "dask-alt"))
    secret, sched, service, route = ko.session_objects(plan, opts, [OWNER])
    host = plan.names.scheduler_host
    assert host == f"{plan.names.slug}.dask.coffea.casa"
    assert route["apiVersion"] == "traefik.io/v1alpha1"
    assert route["spec"]["entryPoints"] == ["dask", "dask-alt"]
    assert route["spec"]["tls"] == {"passthrough": True}
    (rule,) = route["spec"]["routes"]
    assert rule["match"] == f"HostSNI(`{host}`)"
    assert rule["services"] == [{"name": service["metadata"]["name"], "port": 8786}]
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {8786: 8786, 8787: 8787}
    assert service["spec"]["selector"] == {ko.SESSION_LABEL: plan.names.slug}


def test_route_group_and_version_are_configurable(facility):
    plan = plan_for(facility, "alice")
    route = ko.ingress_route_tcp(plan, ko.KubeSessionOptions(route_api_version="traefik.containo.us/v1alpha1"), [OWNER])
    assert route["apiVersion"] == "traefik.containo.us/v1alpha1"


def test_every_extra_object_is_owned_by_the_pod(facility):
    for obj in ko.session_objects(plan_for(facility, "alice"), ko.KubeSessionOptions(), [OWNER]):
        assert obj["metadata"]["ownerReferences"] == [OWNER]
    assert OWNER["kind"] == "Pod" and OWNER["blockOwnerDeletion"] is True
    with pytest.raises(ValueError, match="no uid"):
        ko.owner_reference("jupyter-alice", "")


def test_scheduler_key_is_only_in_the_scheduler_secret(facility):
    plan = plan_for(facility, "alice", access_token="idp-access-token")
    secret, sched, _, _ = ko.session_objects(plan, ko.KubeSessionOptions(), [OWNER])
    sched_key = plan.bundle.get(b.DASK_SCHEDULER_PATH)
    assert set(sched["data"]) == {"dask__ca.pem", "dask__scheduler.pem"}
    assert base64.b64decode(sched["data"]["dask__scheduler.pem"]) == sched_key.content
    assert set(secret["data"]) == {"condor__tokens.d__casa", "bearer_token", "dask__ca.pem", "dask__client.pem", "dask__worker.pem"}
    assert sched_key.key not in secret["data"]
    key_pem = sched_key.content[sched_key.content.index(b"-----BEGIN PRIVATE KEY") :]
    for value in secret["data"].values():
        assert key_pem not in base64.b64decode(value)
    assert secret["metadata"]["annotations"][ko.EXPIRES_ANNOTATION].endswith("Z")


@pytest.fixture
async def spawner(facility):
    sp = make_spawner(CasaKubeSpawner, "http://127.0.0.1:9", "Alice@CERN.ch", uid=1000, gid=100, facility=facility)
    try:
        yield sp
    finally:
        await reset_kubespawner()


async def test_pod_manifest_validates_and_keeps_keys_apart(spawner, master_secrets):
    await spawner.run_auth_state_hook({"access_token": "idp-access-token"})
    spawner._plan = await spawner.plan_new_session()
    pod = ko.to_json(await spawner.get_pod_manifest())
    validate_kubernetes(pod)
    assert_no_master_secret(pod, master_secrets)

    spec = pod["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert sorted(containers) == ["casa-credsync", "dask-scheduler", "notebook"]
    assert [c["name"] for c in spec["initContainers"]] == ["casa-credsync-init"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    names = spawner.session_names
    assert volumes[ko.SECRET_VOLUME]["secret"]["secretName"] == names.secret
    assert volumes[ko.SCHEDULER_VOLUME]["secret"]["secretName"] == names.scheduler_secret
    assert volumes[ko.CREDENTIALS_VOLUME]["emptyDir"]["medium"] == "Memory"

    def mounts(container):
        return {m["name"] for m in container.get("volumeMounts", [])}

    every = list(containers.values()) + spec["initContainers"]
    assert [c["name"] for c in every if ko.SCHEDULER_VOLUME in mounts(c)] == ["dask-scheduler"]
    assert sorted(c["name"] for c in every if ko.SECRET_VOLUME in mounts(c)) == ["casa-credsync", "casa-credsync-init"]
    assert ko.CREDENTIALS_VOLUME in mounts(containers["notebook"])

    # the scheduler key's bytes appear nowhere in the pod (it travels only in its Secret)
    sched_pem = spawner._plan.bundle.get(b.DASK_SCHEDULER_PATH).content
    assert sched_pem[-200:] not in str(pod).encode()

    scheduler = containers["dask-scheduler"]
    assert scheduler["readinessProbe"]["tcpSocket"]["port"] == 8786
    assert {p["containerPort"] for p in scheduler["ports"]} == {8786, 8787}
    cmd = scheduler["command"]
    assert cmd[:3] == ["python3", "-m", "distributed.cli.dask_scheduler"]
    assert cmd[cmd.index("--tls-cert") + 1] == "/var/run/casa-scheduler/dask/scheduler.pem"
    assert cmd[cmd.index("--protocol") + 1] == "tls"

    sync = containers["casa-credsync"]["command"]
    assert sync[sync.index("--uid") + 1] == "1000" and sync[sync.index("--gid") + 1] == "100"
    assert sync[sync.index("--to") + 1] == "/var/run/casa/credentials"
    assert "--once" in spec["initContainers"][0]["command"]

    env = {e["name"]: e["value"] for e in containers["notebook"]["env"]}
    assert env["CASA_SCHEDULER_ADDRESS"] == f"tls://{spawner.facility.names('Alice@CERN.ch').scheduler_host}:8786"
    assert env["DASK_SCHEDULER_ADDRESS"] == "tls://127.0.0.1:8786"
    assert env["_CONDOR_SEC_TOKEN_DIRECTORY"] == "/var/run/casa/credentials/condor/tokens.d"
    assert env["BEARER_TOKEN_FILE"] == "/var/run/casa/credentials/bearer_token"
    assert env["DASK_DISTRIBUTED__DASHBOARD__LINK"] == "{JUPYTERHUB_SERVICE_PREFIX}proxy/8787/status"
    assert "idp-access-token" not in str(pod)  # the token travels in the Secret, not the env
    assert pod["metadata"]["labels"][ko.SESSION_LABEL] == names.route.removeprefix("casa-dask-")


async def test_pod_manifest_needs_a_planned_session(spawner):
    with pytest.raises(RuntimeError, match="planned"):
        await spawner.get_pod_manifest()
