# The one-machine facility (what `casa demo` runs), for use by hand:
#
#     CASA_LOCAL_STATE_DIR=/var/lib/casa jupyterhub -f config/local/jupyterhub_config.py
#
# The settings live in the package (casa_spawner/local/jupyterhub_config.py, documented there), so that
# `casa demo` finds them from any install; this file loads them, then applies site overrides.

import casa_spawner

c = get_config()  # noqa: F821 -- provided by JupyterHub when it loads this file
load_subconfig(casa_spawner.LOCAL_HUB_CONFIG)  # noqa: F821

# --- site overrides ---
