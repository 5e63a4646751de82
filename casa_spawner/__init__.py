"""casa_spawner: where a session runs (Kubernetes pods, local processes)."""

from pathlib import Path

#: The one-machine facility's JupyterHub configuration file (``casa demo`` runs it).
LOCAL_HUB_CONFIG = str(Path(__file__).with_name("local_hub_config.py"))
