"""A real hub's ``/hub/metrics`` shows casa's series with the counts this test caused.

JupyterHub (subprocess) with CasaLocalSpawner and the real ``jupyterhub-singleuser``: alice's
spawn issues her credentials (a 30-second macaroon, renewed after 10% of its life by the hub's
own 1-second poll), starts her scheduler and writes her route; the scrape after a few seconds
shows each of those once, at least one renewal, one active route and an expiry within the
macaroon's life.  After her server stops: no active route, no expiry.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from casa_spawner.demo.xcache import ensure_macaroon_secret
from tests.hub_process import running_hub
from tests.secret_scan import base64_file_forms

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def scrape(hub, secret_file=None) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{hub.url}/hub/metrics", timeout=30) as resp:
        text = resp.read().decode()
    if secret_file is not None:  # nothing of the macaroon secret, in any encoding, ever appears
        assert not any(form in text.encode() for form in base64_file_forms(secret_file.read_bytes()))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) if family.name.startswith("casa_") for s in family.samples}


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_hub_metrics_count_what_a_session_caused(tmp_path):
    secret = ensure_macaroon_secret(tmp_path / "macaroon-secret")
    config = [
        "c.JupyterHub.authenticate_prometheus = False",
        "c.JupyterHub.authenticator_class = 'casa-dummy'",
        "c.CasaDummyAuthenticator.users = {'alice': {'password': 'alice-pw'}}",
        "c.JupyterHub.spawner_class = 'casa-local'",
        f"c.CasaLocalSpawner.state_dir = {str(tmp_path / 'state')!r}",
        f"c.CasaLocalSpawner.routes_dir = {str(tmp_path / 'routes')!r}",
        "c.Spawner.poll_interval = 1",
        "c.Facility.domain = 'casa.test'",
        f"c.Facility.macaroon_secret_file = {str(secret)!r}",
        "c.Facility.xcache_paths = ['/store/user/{username}']",
        "c.Facility.xcache_token_lifetime = 30",
        "c.Facility.renew_fraction = 0.1",
    ]
    with running_hub(tmp_path / "hub", config) as hub:
        before = scrape(hub)
        assert value(before, "casa_active_routes") == 0.0
        assert value(before, "casa_credential_soonest_expiry_seconds") == float("inf")
        assert value(before, "casa_credentials_issued_total", kind="xcache-token") is None

        status, body = hub.api("POST", "/users/alice", {})
        assert status in (201, 409), body
        status, body = hub.api("POST", "/users/alice/server")
        assert status in (201, 202), f"{body}\n{hub.log_text()[-3000:]}"
        hub.wait_for_server("alice", ready=True)
        deadline = time.monotonic() + 30
        while True:  # renewed after 3 s of its 30 s life, at a 1 s poll
            samples = scrape(hub, secret)
            if (value(samples, "casa_credentials_renewed_total", kind="xcache-token") or 0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(1)

        assert value(samples, "casa_credentials_issued_total", kind="xcache-token") == 1.0
        assert value(samples, "casa_credentials_issued_total", kind="dask-tls") == 1.0
        assert value(samples, "casa_credentials_renewed_total", kind="xcache-token") >= 1.0
        assert value(samples, "casa_credentials_renewed_total", kind="dask-tls") is None  # never renewed
        assert value(samples, "casa_active_routes") == 1.0
        assert 0 < value(samples, "casa_credential_soonest_expiry_seconds") <= 30
        for step in ("issue-credentials", "scheduler", "route"):
            assert value(samples, "casa_spawn_step_duration_seconds_count", step=step) == 1.0, step
            assert value(samples, "casa_spawn_step_duration_seconds_sum", step=step) > 0
        assert value(samples, "casa_credential_renewal_failures_total", kind="xcache-token", reason="key-file") is None

        status, _ = hub.api("DELETE", "/users/alice/server")
        assert status in (202, 204)
        hub.wait_for_server("alice", ready=False)
        after = scrape(hub)
        assert value(after, "casa_active_routes") == 0.0
        assert value(after, "casa_credential_soonest_expiry_seconds") == float("inf")
        assert value(after, "casa_credentials_issued_total", kind="xcache-token") == 1.0
