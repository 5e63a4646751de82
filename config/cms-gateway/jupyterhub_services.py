# The hub's side of the CMS dask-gateway (config/cms-gateway/dask_gateway_config.py): load it after
# config/cms/jupyterhub_config.py (z2jh: another hub.extraFiles entry in jupyterhub_config.d/).
#
# The gateway is an external JupyterHub service: the hub does not start it (it runs on a host with
# HTCondor's tools, next to the schedd), gives it an API token to check users' tokens with, and
# proxies /services/dask-gateway/ to it.  Users may use it through the scope
# access:services!service=dask-gateway; the notebook's own JUPYTERHUB_API_TOKEN carries it, so in a
# notebook `dask_gateway.Gateway()` needs no password.
#
# CASA_GATEWAY_URL          where the hub reaches the gateway's proxy, e.g. http://dask-gateway.cmsaf.unl.edu:8000
# CASA_GATEWAY_TCP_ADDRESS  where notebooks reach their schedulers, e.g. gateway://dask-gateway.cmsaf.unl.edu:8786
# DASK_GATEWAY_API_TOKEN    the service's token (`openssl rand -hex 32`), the gateway's JUPYTERHUB_API_TOKEN too

import os

c = get_config()  # noqa: F821 -- provided by JupyterHub when it loads this file
env = os.environ.get
public_url = env("CASA_PUBLIC_URL", "https://cmsaf-jh.unl.edu").rstrip("/")

c.JupyterHub.services.append({
    "name": "dask-gateway",
    "url": env("CASA_GATEWAY_URL", "http://dask-gateway.cmsaf.unl.edu:8000"),
    "api_token": env("DASK_GATEWAY_API_TOKEN"),
    "display": False,
})
c.JupyterHub.load_roles.append({
    "name": "user",
    "scopes": ["self", "access:services!service=dask-gateway"],
})

# what a notebook's dask_gateway.Gateway() reads (dask config from the environment)
c.KubeSpawner.environment.update({
    "DASK_GATEWAY__ADDRESS": f"{public_url}/services/dask-gateway",
    "DASK_GATEWAY__PROXY_ADDRESS": env("CASA_GATEWAY_TCP_ADDRESS", "gateway://dask-gateway.cmsaf.unl.edu:8786"),
    "DASK_GATEWAY__PUBLIC_ADDRESS": f"{public_url}/services/dask-gateway",
    "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
})
