"""CasaKubeSpawner's own API calls with mocked Kubernetes clients: idempotence, retries,
stop with failures, renewal, state."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import json
import logging
from types import SimpleNamespace

import aiohttp
import pytest
from kubernetes_asyncio.client.rest import ApiException
from traitlets.config import Config

from casa_hub import bundle as b
from casa_spawner.kube import CasaKubeSpawner, NamedServerError, SessionCleanupError, SessionObjectError
from tests.casa_kube_helpers import assert_no_master_secret
from tests.fake_kube.spawners import make_spawner, reset_kubespawner

POD = {"metadata": {"name": "jupyter-alice", "uid": "0b5e7f4c-1111-4222-8333-444455556666"}}


def api_error(status: int) -> ApiException:
    return ApiException(status=status, reason={404: "Not Found", 409: "Conflict", 403: "Forbidden", 500: "Internal Server Error"}.get(status, "Error"))


class RawResponse:
    """What kubernetes_asyncio returns for ``_preload_content=False``: the aiohttp response."""

    status, reason = 200, "OK"

    async def read(self) -> bytes:
        return b"{}"

    def release(self) -> None:
        pass


class RecordingApi:
    """Stands in for CoreV1Api / CustomObjectsApi: records calls, answers from a script of faults.

    ``faults[method]`` is a list consumed one per call: an exception to raise,
    ``"hang"`` to outlast the request timeout, or None to succeed.
    """

    def __init__(self, **faults):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.faults = {k: list(v) for k, v in faults.items()}

    def __getattr__(self, method):
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args, **kwargs):
            self.calls.append((method, args, kwargs))
            script = self.faults.get(method)
            fault = script.pop(0) if script else None
            if fault == "hang":
                await asyncio.sleep(30)
            elif fault is not None:
                raise fault
            return RawResponse() if kwargs.get("_preload_content") is False else {}

        return call

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.calls]


@pytest.fixture
async def make(make_facility):
    async def factory(username="alice", facility=None, core=None, custom=None, **traits):
        traits.setdefault("k8s_api_request_timeout", 1)
        traits.setdefault("k8s_api_request_retry_timeout", 8)
        sp = make_spawner(CasaKubeSpawner, "http://127.0.0.1:9", username, facility=facility or make_facility(), **traits)
        sp.api = core or RecordingApi()
        sp.custom_api = custom or RecordingApi()
        return sp

    try:
        yield factory
    finally:
        await reset_kubespawner()


async def planned(sp):
    sp._plan = await sp.plan_new_session()
    sp.bundle = sp._plan.bundle
    return sp


async def test_creates_secrets_service_and_route_owned_by_the_pod(make, master_secrets):
    sp = await planned(await make())
    await sp.create_session_objects(POD)
    assert sp.api.methods() == ["create_namespaced_secret", "create_namespaced_secret", "create_namespaced_service"]
    assert sp.custom_api.methods() == ["create_namespaced_custom_object"]
    (_, _, route_kwargs), = sp.custom_api.calls
    assert route_kwargs["group"] == "traefik.io" and route_kwargs["version"] == "v1alpha1"
    assert route_kwargs["plural"] == "ingressroutetcps" and route_kwargs["namespace"] == "default"
    bodies = [args[1] for _, args, _ in sp.api.calls] + [route_kwargs["body"]]
    for body in bodies:
        assert body["metadata"]["ownerReferences"][0]["uid"] == POD["metadata"]["uid"]
        assert_no_master_secret(body, master_secrets)
    assert [b_["metadata"]["name"] for b_ in bodies] == ["casa-creds-alice", "casa-scheduler-alice", "casa-dask-alice", "casa-dask-alice"]


def calls_for(api: RecordingApi, name: str) -> list[tuple]:
    """The calls about object ``name``, in order (the objects are created at once: their calls interleave)."""
    return [(m, args, kwargs) for m, args, kwargs in api.calls if args[-1]["metadata"]["name"] == name]


async def test_existing_objects_are_replaced_not_a_409_failure(make):
    core = RecordingApi(
        create_namespaced_secret=[api_error(409), api_error(409)],
        create_namespaced_service=[api_error(409)],
    )
    custom = RecordingApi(create_namespaced_custom_object=[api_error(409)])
    sp = await planned(await make(core=core, custom=custom))
    await sp.create_session_objects(POD)
    assert [m for m, _, _ in calls_for(core, "casa-creds-alice")] == ["create_namespaced_secret", "replace_namespaced_secret"]
    assert [m for m, _, _ in calls_for(core, "casa-scheduler-alice")] == ["create_namespaced_secret", "replace_namespaced_secret"]
    assert [m for m, _, _ in calls_for(core, "casa-dask-alice")] == ["create_namespaced_service", "patch_namespaced_service"]
    assert custom.methods() == ["create_namespaced_custom_object", "patch_namespaced_custom_object"]
    # the replacement carries the new pod as owner, with a merge patch where PUT is not possible
    _, args, kwargs = calls_for(core, "casa-dask-alice")[1]
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert args[2]["metadata"]["ownerReferences"][0]["uid"] == POD["metadata"]["uid"]
    _, args, _ = calls_for(core, "casa-creds-alice")[1]
    assert set(args[2]["data"]) >= {"dask__client.pem", "condor__tokens.d__casa"}
    assert custom.calls[1][2]["_content_type"] == "application/merge-patch+json"


async def test_server_errors_and_timeouts_are_retried(make):
    core = RecordingApi(create_namespaced_secret=[api_error(500), "hang", None, api_error(503)])
    sp = await planned(await make(core=core))
    await sp.create_session_objects(POD)
    assert core.methods().count("create_namespaced_secret") == 5
    assert core.methods().count("create_namespaced_service") == 1  # created meanwhile, once


async def test_a_dropped_connection_is_retried_and_the_retry_replaces(make):
    """The create may have happened before the connection dropped: the retry meets a 409 and replaces."""
    core = RecordingApi(create_namespaced_service=[aiohttp.ServerDisconnectedError(), api_error(409)])
    sp = await planned(await make(core=core))
    await sp.create_session_objects(POD)
    assert [m for m, _, _ in calls_for(core, "casa-dask-alice")] == ["create_namespaced_service", "create_namespaced_service", "patch_namespaced_service"]


async def test_a_refusal_fails_at_once_with_a_clear_message(make):
    core = RecordingApi(create_namespaced_service=[api_error(403)])
    sp = await planned(await make(core=core))
    with pytest.raises(SessionObjectError, match=r"Kubernetes refused Service casa-dask-alice: 403 Forbidden"):
        await sp.create_session_objects(POD)
    assert core.methods().count("create_namespaced_service") == 1  # not retried
    assert sp.custom_api.methods() == ["create_namespaced_custom_object"]  # sent at the same time; the failed start's stop() deletes it


async def test_retries_are_bounded(make):
    core = RecordingApi(create_namespaced_secret=[api_error(500)] * 1000)
    sp = await planned(await make(core=core, k8s_api_request_retry_timeout=2))
    with pytest.raises(TimeoutError, match="Could not create Secret casa-creds-alice"):
        await asyncio.wait_for(sp.create_session_objects(POD), 30)


async def test_stop_deletes_every_object_even_when_the_first_delete_fails(make):
    custom = RecordingApi(delete_namespaced_custom_object=[api_error(403)])
    core = RecordingApi(delete_namespaced_service=[api_error(404)], delete_namespaced_secret=[api_error(500), None, None])
    sp = await make(core=core, custom=custom)
    with pytest.raises(SessionCleanupError) as err:
        await sp.delete_session_objects()
    assert "IngressRouteTCP casa-dask-alice" in str(err.value) and "403" in str(err.value)
    assert "Secret" not in str(err.value)  # the 500 was retried and succeeded
    deleted = [args[0] for m, args, _ in core.calls if m.startswith("delete")]
    assert deleted == ["casa-dask-alice", "casa-creds-alice", "casa-scheduler-alice", "casa-creds-alice"]


async def test_deletes_that_all_hang_are_waited_for_once_not_one_after_another(make):
    core = RecordingApi(delete_namespaced_service=["hang"] * 100, delete_namespaced_secret=["hang"] * 200)
    custom = RecordingApi(delete_namespaced_custom_object=["hang"] * 100)
    sp = await make(core=core, custom=custom, k8s_api_request_timeout=1, k8s_api_request_retry_timeout=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SessionCleanupError) as err:
        await asyncio.wait_for(sp.delete_session_objects(), 30)
    assert loop.time() - started < 2 * 3 + 2  # one retry timeout (plus a last attempt), not four
    for name in ["IngressRouteTCP casa-dask-alice", "Service casa-dask-alice", "Secret casa-creds-alice", "Secret casa-scheduler-alice"]:
        assert name in str(err.value)


async def test_unanswered_deletes_and_patches_are_logged_as_they_are_retried(make, caplog):
    caplog.set_level(logging.WARNING)
    core = RecordingApi(delete_namespaced_service=["hang"], patch_namespaced_secret=[aiohttp.ServerDisconnectedError(), api_error(503)])
    sp = await make(core=core)
    await sp.delete_session_objects()
    await sp.session_api.patch_secret_data("casa-creds-alice", {"bearer_token": "eA=="})
    assert core.methods().count("delete_namespaced_service") == 2 and core.methods().count("patch_namespaced_secret") == 3
    assert "No answer deleting Service casa-dask-alice (TimeoutError), retrying" in caplog.text
    assert "No answer patching Secret casa-creds-alice (ServerDisconnectedError), retrying" in caplog.text
    assert "Kubernetes answered 503 Error patching Secret casa-creds-alice, retrying" in caplog.text


async def test_stop_with_nothing_left_is_quiet(make):
    core = RecordingApi(delete_namespaced_service=[api_error(404)], delete_namespaced_secret=[api_error(404)] * 2)
    custom = RecordingApi(delete_namespaced_custom_object=[api_error(404)])
    sp = await make(core=core, custom=custom)
    await sp.delete_session_objects()
    assert len(core.calls) == 3 and len(custom.calls) == 1


async def test_every_delete_failing_reports_all_of_them(make):
    core = RecordingApi(delete_namespaced_service=[api_error(403)], delete_namespaced_secret=[api_error(403)] * 2)
    custom = RecordingApi(delete_namespaced_custom_object=["hang"] * 100)
    sp = await make(core=core, custom=custom, k8s_api_request_timeout=1, k8s_api_request_retry_timeout=2)
    with pytest.raises(SessionCleanupError) as err:
        await asyncio.wait_for(sp.delete_session_objects(), 30)
    for name in ["IngressRouteTCP casa-dask-alice", "Service casa-dask-alice", "Secret casa-creds-alice", "Secret casa-scheduler-alice"]:
        assert name in str(err.value)


async def test_logs_name_objects_never_credentials(make, master_secrets, caplog):
    caplog.set_level(logging.DEBUG)
    core = RecordingApi(create_namespaced_secret=[api_error(409), api_error(500)])
    sp = await planned(await make(core=core))
    await sp.create_session_objects(POD)
    await sp.renew_credentials(now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3))
    await sp.delete_session_objects()
    assert "casa-creds-alice" in caplog.text
    assert_no_master_secret(caplog.text, master_secrets)
    for f in sp.bundle.files:
        token = f.content.strip().splitlines()[-2 if f.content.startswith(b"-----") else 0]
        assert token.decode() not in caplog.text


async def test_renewal_patches_only_the_reissued_tokens(make, master_secrets):
    sp = await planned(await make())
    before = sp.bundle
    assert await sp.renew_credentials() == []  # nothing is due yet
    assert sp.api.calls == []

    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=10)  # past 2/3 of the 12 h macaroon
    renewed = await sp.renew_credentials(now=later)
    assert renewed == [b.BEARER_TOKEN_PATH]
    (method, args, _), = sp.api.calls
    assert method == "patch_namespaced_secret" and args[:2] == ("casa-creds-alice", "default")
    data = args[2]["data"]
    assert list(data) == ["bearer_token"]
    assert base64.b64decode(data["bearer_token"]) == sp.bundle.get(b.BEARER_TOKEN_PATH).content
    assert sp.bundle.get(b.BEARER_TOKEN_PATH).content != before.get(b.BEARER_TOKEN_PATH).content
    assert sp.bundle.get(b.CONDOR_TOKEN_PATH) is before.get(b.CONDOR_TOKEN_PATH)
    assert_no_master_secret(args[2], master_secrets)


async def test_failed_renewal_keeps_the_current_bundle_and_poll_survives(make):
    core = RecordingApi(patch_namespaced_secret=[api_error(403)])
    sp = await planned(await make(core=core))
    before = sp.bundle
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=10)
    with pytest.raises(SessionObjectError, match="renewal of Secret casa-creds-alice: 403"):
        await sp.renew_credentials(now=later)
    assert sp.bundle is before


async def test_access_token_from_auth_state_becomes_the_bearer_token(make_facility, make):
    sp = await make(facility=make_facility(macaroon_secret_file=""))
    expiry = int(time.time()) + 3600
    await sp.run_auth_state_hook({"access_token": "idp-token-1", "refresh_token": "r", "casa": {"access_token_expires_at": expiry}})
    await planned(sp)
    bearer = sp.bundle.get(b.BEARER_TOKEN_PATH)
    assert bearer.content == b"idp-token-1\n"
    assert bearer.expires_at == dt.datetime.fromtimestamp(expiry, dt.timezone.utc)  # the IdP's expiry travels with it

    sp.user.auth_state = {"access_token": "idp-token-2", "casa": {"access_token_expires_at": expiry + 3600}}  # refreshed
    assert await sp.renew_credentials() == [b.BEARER_TOKEN_PATH]
    assert base64.b64decode(sp.api.calls[-1][1][2]["data"]["bearer_token"]) == b"idp-token-2\n"
    assert sp.bundle.get(b.BEARER_TOKEN_PATH).expires_at == dt.datetime.fromtimestamp(expiry + 3600, dt.timezone.utc)


async def test_state_keeps_expiry_times_only_and_renewal_resumes_after_a_restart(make, facility):
    sp = await planned(await make(facility=facility))
    state = sp.get_state()
    text = json.dumps(state)
    for f in sp.bundle.files:
        assert f.content.decode().strip()[:40] not in text
    assert {s["path"] for s in state["casa_renewable"]} == {b.CONDOR_TOKEN_PATH, b.BEARER_TOKEN_PATH, b.DASK_CA_PATH}  # the CA: when the session must end

    restarted = await make(facility=facility)
    restarted.load_state(state)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    renewed = await restarted.renew_credentials(now=later)
    assert sorted(renewed) == [b.BEARER_TOKEN_PATH, b.CONDOR_TOKEN_PATH]
    data = restarted.api.calls[-1][1][2]["data"]
    assert all(base64.b64decode(v).strip() for v in data.values())  # real tokens, never the placeholders


async def test_renewed_expiry_times_are_saved_in_the_hub_database(make):
    sp = await planned(await make())
    commits = []
    sp.orm_spawner = SimpleNamespace(name="", display_name="", server=None, state=None)
    sp.db = SimpleNamespace(commit=lambda: commits.append(sp.orm_spawner.state))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=10)
    await sp.renew_credentials(now=later)
    (saved,) = commits
    bearer = next(s for s in saved["casa_renewable"] if s["path"] == b.BEARER_TOKEN_PATH)
    assert bearer["issued_at"] == later.replace(microsecond=0).isoformat()


async def test_named_servers_are_refused_clearly(make):
    sp = await make()
    sp.orm_spawner = SimpleNamespace(name="gpu", display_name="gpu", server=None)  # what the hub's ORM row gives
    with pytest.raises(NamedServerError, match="one session per user"):
        await sp.start()


def test_kubespawners_traits_are_kubespawners():
    """No trait of KubeSpawner is redeclared: ``c.KubeSpawner.<trait>`` means here what it means upstream."""
    from kubespawner import KubeSpawner

    parent = KubeSpawner.class_traits()
    mine = CasaKubeSpawner.class_traits()
    assert [name for name in parent if mine[name] is not parent[name]] == []


async def test_traits_come_from_config(make):
    cfg = Config()
    cfg.CasaKubeSpawner.ingress_route_group = "traefik.containo.us"
    cfg.CasaKubeSpawner.ingress_route_entry_points = ["dask", "dask2"]
    cfg.CasaKubeSpawner.credsync_image = "example.org/casa-hub:1"
    cfg.CasaKubeSpawner.uid = 0  # a notebook that starts as root and drops to NB_UID
    cfg.CasaKubeSpawner.credentials_uid = 1001
    sp = await make(config=cfg)
    opts = sp.session_options()
    assert opts.route_api_version == "traefik.containo.us/v1alpha1"
    assert opts.route_entry_points == ("dask", "dask2")
    assert opts.credsync_image == "example.org/casa-hub:1"
    assert opts.scheduler_image == sp.image  # empty: the notebook image
    await planned(sp)
    pod = await sp.get_pod_manifest()
    sync = next(c for c in pod.spec.containers if c.name == "casa-credsync")
    assert sync.command[sync.command.index("--uid") + 1] == "1001"
    assert sync.command[sync.command.index("--gid") + 1] == "100"

    cfg.CasaKubeSpawner.credsync_interval = 0
    with pytest.raises(ValueError, match="credsync_interval must be within"):
        await make(config=cfg)
