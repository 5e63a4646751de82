"""casa_spawner.gateway: an HTCondor backend for dask-gateway-server.

In ``dask_gateway_config.py``::

    c.DaskGateway.backend_class = "casa_spawner.gateway.HTCondorBackend"
    c.Facility.signing_key_file = "/etc/casa/secrets/POOL"   # the pool and identities: casa_hub's Facility
"""

from .backend import FailedClusterReport, HTCondorBackend, HTCondorClusterConfig

__all__ = ["HTCondorBackend", "HTCondorClusterConfig", "FailedClusterReport"]
