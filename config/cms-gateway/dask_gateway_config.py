# dask-gateway in front of the CMS pool (T2_US_Nebraska), beside the CMS analysis facility's hub
# (config/cms): users authenticate with their JupyterHub API token (the notebook has one), and each
# cluster's scheduler and workers run as HTCondor jobs under the user's own identity,
# <slug>@<trust domain> -- the identity their notebook's IDTOKEN carries too.
#
#     pip install "jupyterhub-casa[gateway]"        # on a host with HTCondor's tools (condor_submit, ...)
#     dask-gateway-server -f config/cms-gateway/dask_gateway_config.py
#
# The pool is configured once, as c.Facility, from the same environment the hub reads (config/cms,
# values.yaml hub.extraEnv), so the hub and the gateway can never disagree about it:
#
# CASA_TRUST_DOMAIN        the pool's TRUST_DOMAIN (the IDTOKENs' iss)
# CASA_COLLECTOR_HOST / CASA_SCHEDD_HOST   where the clusters' jobs are submitted
# CASA_DASK_DOMAIN         the facility's domain (user slugs and identities are derived as in the hub)
# CASA_KEYS_DIR            the pool signing key POOL and the macaroon secret (0600, readable by the gateway's user only)
# CASA_XCACHE_HOST         the XCache the workers read through (root://...), with the user's macaroon
# CASA_CREDD_HOST          the pool's condor_credd, which keeps each user's macaroon fresh in running workers
# CASA_GATEWAY_URL         the gateway as the notebooks and the jobs reach it
# CASA_GATEWAY_IMAGE       the image the scheduler and workers run in (needs distributed + dask-gateway)
# JUPYTERHUB_API_TOKEN     the gateway's token as a hub service (config/cms-gateway/jupyterhub_services.py)
# JUPYTERHUB_API_URL       e.g. https://cmsaf-jh.unl.edu/hub/api
# DASK_GATEWAY_ENCRYPT_KEYS  `openssl rand -base64 32`: encrypts the TLS keys in the gateway's database

import os

c = get_config()  # noqa: F821 -- provided by dask-gateway-server when it loads this file
env = os.environ.get
keys_dir = env("CASA_KEYS_DIR", "/etc/casa/secrets/keys")
gateway_url = env("CASA_GATEWAY_URL", "http://dask-gateway.cmsaf.unl.edu:8000").rstrip("/")

# -- who: JupyterHub says (dask-gateway's own JupyterHubAuthenticator) ---------------------
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"  # tokens need access:services!service=dask-gateway

# -- where it listens ------------------------------------------------------------------------
c.DaskGateway.address = "127.0.0.1:8001"  # the private API (the proxy in front of it is public)
c.Proxy.address = ":8000"  # HTTP: the API and the dashboards (/clusters/<name>/status)
c.Proxy.tcp_address = ":8786"  # TLS: clients reach their scheduler here, routed by SNI (= cluster name)
c.Proxy.prefix = "/services/dask-gateway"  # the hub proxies its /services/dask-gateway/ here

# -- the pool and the users' identities: casa_hub's Facility, as in the hub ---------------------
c.DaskGateway.backend_class = "casa_spawner.gateway.HTCondorBackend"
c.Facility.domain = env("CASA_DASK_DOMAIN", "coffea.casa")
c.Facility.trust_domain = env("CASA_TRUST_DOMAIN", "red-condor.unl.edu")
c.Facility.collector_host = env("CASA_COLLECTOR_HOST", "red-condor.unl.edu:9619")
c.Facility.schedd_host = env("CASA_SCHEDD_HOST", "t3.unl.edu")
c.Facility.signing_key_file = f"{keys_dir}/POOL"
c.Facility.condor_token_lifetime = 3 * 86400  # renewed by the gateway after 2/3 of it
# the workers' data token: the gateway issues each user's macaroon as the hub does (same secret, same paths)
# and gives every renewal to the pool's credd as the user; the workers read $_CONDOR_CREDS/xcache.use
c.Facility.macaroon_secret_file = f"{keys_dir}/macaroon-secret"
c.Facility.xcache_site = "T2_US_Nebraska"
c.Facility.xcache_host = env("CASA_XCACHE_HOST", "root://red-xcache1.unl.edu:1094")
c.Facility.xcache_paths = ["/store"]
c.Facility.xcache_token_lifetime = 12 * 3600
c.Facility.credd_host = env("CASA_CREDD_HOST", env("CASA_SCHEDD_HOST", "t3.unl.edu"))
c.Facility.data_token_service = "xcache" if c.Facility.credd_host else ""

# -- the backend -----------------------------------------------------------------------------
c.HTCondorBackend.api_url = f"{gateway_url}/services/dask-gateway/api"  # the schedulers' heartbeats, from the worker nodes
c.HTCondorBackend.db_url = "sqlite:////var/lib/dask-gateway/gateway.sqlite"  # a restart finds its clusters
c.HTCondorBackend.stop_clusters_on_shutdown = False
c.HTCondorBackend.condor_timeout = 60
c.HTCondorBackend.cluster_start_timeout = 900  # a busy pool takes a while to match the scheduler job
c.HTCondorBackend.worker_start_timeout = 1800
c.HTCondorBackend.cluster_status_period = 30
c.HTCondorBackend.worker_status_period = 60
c.HTCondorBackend.max_worker_cores = 8
c.HTCondorBackend.max_worker_memory = "32 G"
image = env("CASA_GATEWAY_IMAGE", "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/coffeateam/coffea-dask-almalinux9:latest")
c.HTCondorBackend.worker_images = {"coffea": image}
c.HTCondorBackend.allowed_environment = ["OMP_NUM_THREADS", "MALLOC_*", "COFFEA_*", "X509_*"]

c.HTCondorClusterConfig.scheduler_cores = 1
c.HTCondorClusterConfig.scheduler_memory = "4 G"
c.HTCondorClusterConfig.worker_cores = 1
c.HTCondorClusterConfig.worker_memory = "4 G"
c.HTCondorClusterConfig.image = image
c.HTCondorClusterConfig.idle_timeout = 3600  # an idle cluster gives its slots back after an hour
c.HTCondorClusterConfig.cluster_max_workers = 200
c.HTCondorClusterConfig.job_extra_directives = {
    "+AccountingGroup": '"cms.af.dask"',
    "+DESIRED_Sites": '"T2_US_Nebraska"',
}
