"""casa_spawner: code that runs in the hub (or a gateway) and decides where a session runs.

``kube/`` -- the hub on Kubernetes; ``local/`` -- the hub on one machine; ``demo/`` -- ``casa demo``,
the whole one-machine facility.  What runs inside a user's session lives in ``casa_session``.
"""

from pathlib import Path

#: The one-machine facility's JupyterHub configuration file (``casa demo`` runs it).
LOCAL_HUB_CONFIG = str(Path(__file__).parent / "local" / "jupyterhub_config.py")
