"""Full OIDC login round trips per second: CasaOAuthenticator vs plain GenericOAuthenticator.

One real provider (npm oidc-provider, tests/oidc_provider) and two real JupyterHubs (one per
authenticator, same provider, same user, same scopes, auth_state on in both) run side by
side; batches of logins alternate between them so machine load hits both alike.

One round trip, driven by an HTTP client (``requests``) instead of a browser — the same
redirects and the same provider login form, without page rendering time:
hub ``/hub/oauth_login`` -> provider ``/authorize`` -> login form (POST) -> consent ->
hub ``/hub/oauth_callback`` (code -> tokens -> userinfo -> groups -> user) -> ``/hub/home`` (200).

    python3 -m bench.login [--logins N] [--batch B]    (from the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from tests.auth_servers import login_hub_config, oauth_config, oidc_provider, provider_sign_in
from tests.hub_process import hub_ports, running_hub

SCOPES = ["openid", "profile", "email", "offline_access", "wlcg.groups"]


def casa_config(issuer: str, hub_url: str) -> str:
    return oauth_config(issuer, hub_url) + f"""
c.CasaOAuthenticator.idp = "cms-iam"
c.CasaOAuthenticator.issuer = {issuer!r}
c.CasaOAuthenticator.scope = {SCOPES!r}
c.CasaOAuthenticator.allowed_groups = {{"cms"}}
c.CasaOAuthenticator.admin_groups = {{"cms/admins"}}
"""


def generic_config(issuer: str, hub_url: str) -> str:
    return oauth_config(issuer, hub_url, "GenericOAuthenticator") + f"""
c.GenericOAuthenticator.authorize_url = "{issuer}/authorize"
c.GenericOAuthenticator.token_url = "{issuer}/token"
c.GenericOAuthenticator.userdata_url = "{issuer}/userinfo"
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.scope = {SCOPES!r}
c.GenericOAuthenticator.enable_auth_state = True
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = lambda s: s["oauth_user"].get("wlcg.groups", [])
c.GenericOAuthenticator.allowed_groups = {{"/cms"}}
c.GenericOAuthenticator.admin_groups = {{"/cms/admins"}}
"""


def one_login(hub_url: str) -> float:
    start = time.perf_counter()
    with requests.Session() as session:
        callback = provider_sign_in(session, f"{hub_url}/hub/oauth_login?next=%2Fhub%2Fhome", "alice", "alice-pw", f"{hub_url}/hub/oauth_callback")
        response = session.get(callback, timeout=30)
        if response.status_code != 200 or not response.url.endswith("/hub/home"):
            raise RuntimeError(f"login did not reach /hub/home: {response.status_code} {response.url}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=40, help="logins per authenticator")
    parser.add_argument("--batch", type=int, default=5, help="logins per batch before switching hubs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (casa_port, casa_url), (generic_port, generic_url) = hub_ports(), hub_ports()
        callbacks = [f"{casa_url}/hub/oauth_callback", f"{generic_url}/hub/oauth_callback"]
        with oidc_provider(work, callbacks) as issuer, \
                running_hub(work / "casa", [*login_hub_config("casa"), casa_config(issuer, casa_url)], port=casa_port), \
                running_hub(work / "generic", [*login_hub_config("generic-oauth"), generic_config(issuer, generic_url)],
                            port=generic_port):
            hubs = {"CasaOAuthenticator": casa_url, "GenericOAuthenticator": generic_url}
            for url in hubs.values():  # warm-up: first login creates the user row
                one_login(url)
            samples: dict[str, list[float]] = {name: [] for name in hubs}
            while any(len(s) < args.logins for s in samples.values()):
                for name, url in hubs.items():
                    for _ in range(min(args.batch, args.logins - len(samples[name]))):
                        samples[name].append(one_login(url))

    rates = {}
    for name, times in samples.items():
        rates[name] = len(times) / sum(times)
        print(f"{name:22s} {rates[name]:6.1f} logins/s  median {statistics.median(times) * 1e3:6.1f} ms  "
              f"max {max(times) * 1e3:6.1f} ms  (n={len(times)}, sequential, HTTP client)")
    ratio = rates["CasaOAuthenticator"] / rates["GenericOAuthenticator"]
    print(f"ratio Casa / Generic (logins per second): {ratio:.2f}")


if __name__ == "__main__":
    main()
