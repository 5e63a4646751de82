# The CMS analysis facility on Kubernetes (zero-to-jupyterhub): CMS INDIGO IAM login,
# CasaKubeSpawner, Traefik routing tls://<slug>.dask.coffea.casa:8786 to each user's scheduler.
#
# z2jh loads this file from /usr/local/etc/jupyterhub/jupyterhub_config.d/ (see values.yaml:
#     helm upgrade --install casa jupyterhub/jupyterhub --version 4.4.0 -f config/cms/values.yaml \
#       --set-file hub.extraFiles.casa-config.stringData=config/cms/jupyterhub_config.py
# ), after the chart's own settings, so c.KubeSpawner.* from the chart (image, uid, storage)
# still apply to CasaKubeSpawner.  Site-specific values come from the environment
# (hub.extraEnv); secrets only from files or env vars a (Sealed)Secret fills.
#
# CASA_PUBLIC_URL          the hub's public URL (OAuth callback), https://cmsaf-jh.unl.edu
# CASA_DASK_DOMAIN         schedulers are tls://<slug>.dask.<this>:8786, coffea.casa
# CASA_TRUST_DOMAIN        the HTCondor pool's TRUST_DOMAIN
# CASA_COLLECTOR_HOST / CASA_SCHEDD_HOST   where Dask workers are submitted
# CASA_XCACHE_HOST         root://... of the XCache
# CASA_XCACHE_HTTPS_HOST   its https://host:port, only where HTTPS is not served on CASA_XCACHE_HOST's port
# CASA_CREDD_HOST          the pool's condor_credd (usually the schedd's machine), which keeps each user's
#                          data token for their running workers; "" turns that off (see below)
# CASA_KEYS_DIR            where the hub's init container put the master keys (0600, hub uid)
# CASA_SESSION_IMAGE       image with jupyterhub-casa for the credential-sync sidecar (the hub image)
# CASA_WORKER_IMAGE        the Dask workers' image, run by HTCondor's docker universe (as in the slides)
# OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET: from the jhub-cms-auth Secret; auth_state's key: the chart's
# c.CryptKeeper.keys (its own Secret, see values.yaml)

import os

import casa_auth

# `c` is given by both loaders of this file: traitlets' (`jupyterhub -f`) and the chart's hub, which
# exec()s jupyterhub_config.d/*.py in its own namespace -- where get_config is z2jh's get_config(key)
# and must not be called here.
c = c  # noqa: F821
env = os.environ.get

public_url = env("CASA_PUBLIC_URL", "https://cmsaf-jh.unl.edu").rstrip("/")
keys_dir = env("CASA_KEYS_DIR", "/etc/casa/secrets/keys")

# -- who may log in: CMS members, through CMS IAM -------------------------------
c.JupyterHub.authenticator_class = "casa"
c.JupyterHub.template_paths = [casa_auth.TEMPLATE_DIR]  # the facility's login and refusal pages
c.CasaOAuthenticator.facility_name = "Coffea-Casa Analysis Facility @ T2_US_Nebraska"
c.CasaOAuthenticator.login_service = "CMS SSO"
c.CasaOAuthenticator.announcements = ["Authorized CMS Users Only! Watch here for announcements."]
c.CasaOAuthenticator.links = [{"text": "Coffea-Casa Docs", "url": "https://coffea-casa.readthedocs.io"}]
c.Authenticator.enable_auth_state = True  # the spawner reads the access token; the chart sets c.CryptKeeper.keys
c.CasaOAuthenticator.idp = "cms-iam"
c.CasaOAuthenticator.issuer = "https://cms-auth.web.cern.ch/"
c.CasaOAuthenticator.oauth_callback_url = f"{public_url}/hub/oauth_callback"
c.CasaOAuthenticator.group_claims = ["wlcg.groups", "groups"]
c.CasaOAuthenticator.allowed_groups = {"cms"}
c.CasaOAuthenticator.admin_groups = {"cms/af-admins"}
c.CasaOAuthenticator.signup_url = "https://cms-auth.web.cern.ch/start-registration"
c.CasaOAuthenticator.refresh_pre_spawn = True  # a spawn never starts with an expired access token

# -- what every user gets -----------------------------------------------------------
c.Facility.domain = env("CASA_DASK_DOMAIN", "coffea.casa")
c.Facility.dask_port = 8786
c.Facility.trust_domain = env("CASA_TRUST_DOMAIN", "red-condor.unl.edu")
c.Facility.collector_host = env("CASA_COLLECTOR_HOST", "red-condor.unl.edu:9619")
c.Facility.schedd_host = env("CASA_SCHEDD_HOST", "t3.unl.edu")
c.Facility.signing_key_file = f"{keys_dir}/POOL"
c.Facility.condor_token_lifetime = 3 * 86400
c.Facility.macaroon_secret_file = f"{keys_dir}/macaroon-secret"
c.Facility.xcache_site = "T2_US_Nebraska"
c.Facility.xcache_host = env("CASA_XCACHE_HOST", "root://red-xcache1.unl.edu:1094")
c.Facility.xcache_https_host = env("CASA_XCACHE_HTTPS_HOST", "")  # empty: HTTPS on the same host and port
c.Facility.xcache_paths = ["/store"]
c.Facility.xcache_token_name = "{slug}"  # usernames may hold spaces (DNs); the slug never does
c.Facility.xcache_token_lifetime = 12 * 3600  # within XRootD's default maxduration (24 h)
# The macaroon inside running workers: the hub gives the pool's condor_credd every renewal, as the user
# (condor_store_cred add-oauth -P -s xcache, with the user's IDTOKEN), and HTCondor's starter copies it into
# $_CONDOR_CREDS/xcache.use of every running worker within the pool's SEC_CREDENTIAL_REFRESH (300 s by
# default).  The pool needs a credd: CREDD in the schedd machine's DAEMON_LIST and
# SEC_CREDENTIAL_DIRECTORY_OAUTH set; the hub image needs condor_store_cred.  Without a credd (CASA_CREDD_HOST
# ""), the macaroon travels once with each worker job and workers lose data access when it expires (12 h).
c.Facility.credd_host = env("CASA_CREDD_HOST", env("CASA_SCHEDD_HOST", "t3.unl.edu"))
c.Facility.data_token_service = "xcache" if c.Facility.credd_host else ""

# -- where it runs: a pod per user, with its Dask scheduler beside the notebook ----------
c.JupyterHub.spawner_class = "casa-kube"
c.CasaKubeSpawner.ingress_route_group = "traefik.io"
c.CasaKubeSpawner.ingress_route_version = "v1alpha1"
c.CasaKubeSpawner.ingress_route_entry_points = ["dask"]  # Traefik's TLS-passthrough entry point (traefik-values.yaml)
c.CasaKubeSpawner.credsync_image = env("CASA_SESSION_IMAGE", "ghcr.io/coffeateam/jupyterhub-casa-hub:0.1.0")
c.CasaKubeSpawner.scheduler_resources = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
c.CasaKubeSpawner.uid = 1000  # jovyan: owner of the credential files
c.CasaKubeSpawner.gid = 100

# -- Dask workers: HTCondor jobs on the site's schedd (c.Facility.schedd_host), each user's own IDTOKEN ----
# CasaCluster() in a notebook reads dask config `jobqueue.casa` (defaults: casa_session/casa.yaml); the
# site's choices travel as DASK_JOBQUEUE__CASA__* variables of the notebook.  As in the slides: the
# worker image runs in HTCondor's docker universe, its Dask port published as the container service
# "dask" (container_service_names / dask_container_port).  Values are parsed as Python literals where
# they are one (dask's rule): "2" is a number, "6 GiB" stays a string.
worker_env = {
    "CONDOR_CONFIG": "ONLY_ENV",  # the pool is in the _CONDOR_* variables the spawner sets
    "DASK_JOBQUEUE__CASA__UNIVERSE": "docker",
    "DASK_JOBQUEUE__CASA__WORKER_IMAGE": env("CASA_WORKER_IMAGE", "coffeateam/coffea-casa-analysis:latest"),
    "DASK_JOBQUEUE__CASA__PYTHON": "python3",  # the image's Python
    "DASK_JOBQUEUE__CASA__CORES": "2",
    "DASK_JOBQUEUE__CASA__MEMORY": "6 GiB",
    "DASK_JOBQUEUE__CASA__DEATH_TIMEOUT": "60",
    # one variable per submit command (dask nests at "__"; KubeSpawner would read braces as a template)
    "DASK_JOBQUEUE__CASA__JOB_EXTRA_DIRECTIVES__CONTAINER_SERVICE_NAMES": "dask",
    "DASK_JOBQUEUE__CASA__JOB_EXTRA_DIRECTIVES__DASK_CONTAINER_PORT": "8786",
}
# the chart's singleuser.extraEnv (c.KubeSpawner.environment) is kept and wins, e.g. DASK_JOBQUEUE__CASA__CORES: "4"
c.KubeSpawner.environment = {**worker_env, **(c.KubeSpawner.get("environment") or {})}
# when a session stops, the hub removes its remaining jobs as the user (c.SessionJobs): the hub image
# needs HTCondor's condor_rm (e.g. the htcondor package), else each stop logs one warning and the
# workers end by their death-timeout once the scheduler is gone
c.SessionJobs.timeout = 30
