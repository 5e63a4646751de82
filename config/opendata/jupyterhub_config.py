# The CMS Open Data analysis facility on Kubernetes (zero-to-jupyterhub): CILogon login for
# members of the "OpenData Facility" COmanage group, CasaKubeSpawner, Traefik routing
# tls://<slug>.dask.coffea-opendataaf.casa:8786 to each user's scheduler.
#
# Loaded by z2jh from /usr/local/etc/jupyterhub/jupyterhub_config.d/ (values.yaml:
#     helm upgrade --install casa jupyterhub/jupyterhub --version 4.4.0 -f config/opendata/values.yaml \
#       --set-file hub.extraFiles.casa-config.stringData=config/opendata/jupyterhub_config.py
# ).  Open data needs no XCache token: the notebook's bearer token is the CILogon access
# token; Dask workers still run as HTCondor jobs with a per-user IDTOKEN.
#
# CASA_PUBLIC_URL, CASA_DASK_DOMAIN, CASA_TRUST_DOMAIN, CASA_COLLECTOR_HOST, CASA_SCHEDD_HOST,
# CASA_KEYS_DIR, CASA_SESSION_IMAGE: as in config/cms/jupyterhub_config.py
# OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET: from the jhub-cilogon Secret; auth_state's key: the chart's
# c.CryptKeeper.keys (its own Secret, see values.yaml)

import os

import casa_auth

# `c` is given by both loaders of this file: traitlets' (`jupyterhub -f`) and the chart's hub, which
# exec()s jupyterhub_config.d/*.py in its own namespace -- where get_config is z2jh's get_config(key)
# and must not be called here.
c = c  # noqa: F821
env = os.environ.get

public_url = env("CASA_PUBLIC_URL", "https://coffea-opendataaf.casa").rstrip("/")
keys_dir = env("CASA_KEYS_DIR", "/etc/casa/secrets/keys")

# -- who may log in: active members of the OpenData Facility, through CILogon ----------
c.JupyterHub.authenticator_class = "casa"
c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]  # the facility's login and refusal pages
c.Authenticator.enable_auth_state = True
c.CasaOAuthenticator.idp = "cilogon"
c.CasaOAuthenticator.oauth_callback_url = f"{public_url}/hub/oauth_callback"
c.CasaOAuthenticator.scope = ["openid", "email", "profile", "org.cilogon.userinfo"]
c.CasaOAuthenticator.group_claims = ["isMemberOf"]
c.CasaOAuthenticator.allowed_groups = {"CO:COU:OpenData Facility:members:active"}
c.CasaOAuthenticator.admin_groups = {"CO:COU:OpenData Facility Admins:members:active"}
c.CasaOAuthenticator.signup_url = "https://registry.cilogon.org/registry/co_petitions/start/coef:1"
c.CasaOAuthenticator.refresh_pre_spawn = True

# -- what every user gets -----------------------------------------------------------
c.Facility.domain = env("CASA_DASK_DOMAIN", "coffea-opendataaf.casa")
c.Facility.dask_port = 8786
c.Facility.trust_domain = env("CASA_TRUST_DOMAIN", "red-condor.unl.edu")
c.Facility.collector_host = env("CASA_COLLECTOR_HOST", "red-condor.unl.edu:9619")
c.Facility.schedd_host = env("CASA_SCHEDD_HOST", "t3.unl.edu")
c.Facility.signing_key_file = f"{keys_dir}/POOL"
c.Facility.condor_identity = "opendata-{slug}@{trust_domain}"
c.Facility.macaroon_secret_file = ""  # no XCache token: BEARER_TOKEN_FILE holds the CILogon access token

# -- where it runs ------------------------------------------------------------------
c.JupyterHub.spawner_class = "casa-kube"
c.CasaKubeSpawner.ingress_route_entry_points = ["dask"]
c.CasaKubeSpawner.credsync_image = env("CASA_SESSION_IMAGE", "ghcr.io/coffeateam/jupyterhub-casa-hub:0.1.0")
c.CasaKubeSpawner.uid = 1000
c.CasaKubeSpawner.gid = 100
