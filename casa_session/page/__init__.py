"""The casa page: a Jupyter server extension in the user's own notebook server, at ``<base_url>casa/``.

It shows the session's public scheduler address, the dashboard link and every credential's
expiry, and offers the client bundle a laptop needs (:mod:`.bundle`).  It is served by the
single-user server, so JupyterHub's single-user authentication decides who sees it: the
session's owner (and whoever the hub grants ``access:servers`` on it), nobody else.

Enabled by ``etc/jupyter/jupyter_server_config.d/casa_session.json``, which a (non-editable)
install puts into the environment's ``etc/jupyter`` (``jupyter server extension list`` shows it);
a spawner can also point ``JUPYTER_CONFIG_PATH`` at :data:`CONFIG_DIR`, the same file inside the
package (the one-machine facility does).  Without a casa session in the environment the page says
so and offers nothing.

``casa/dashboard/`` leads to the session's Dask dashboard (:class:`.handlers.DashboardHandler`);
JupyterLab's Dask sidebar (dask-labextension) gets it as its default URL from
``share/jupyter/lab/settings/overrides.d/jupyterhub-casa.json``, which an install puts into the
environment's JupyterLab settings, or from :data:`LAB_SETTINGS_DIR` as ``LabApp.app_settings_dir``.
"""

from pathlib import Path

#: the package's own Jupyter configuration directory (``jupyter_server_config.d/casa_session.json``)
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "etc" / "jupyter")
#: the package's own JupyterLab settings directory (``overrides.d/jupyterhub-casa.json``: the Dask sidebar's default)
LAB_SETTINGS_DIR = str(Path(__file__).resolve().parents[1] / "share" / "jupyter" / "lab" / "settings")


def _jupyter_server_extension_points():
    return [{"module": "casa_session.page"}]


def _load_jupyter_server_extension(serverapp):
    from jupyter_server.utils import url_path_join

    from .handlers import BundleHandler, DashboardHandler, PageHandler

    base = url_path_join(serverapp.web_app.settings["base_url"], "casa")
    serverapp.web_app.add_handlers(".*$", [
        (base + "/?", PageHandler),
        (base + "/bundle", BundleHandler),
        (base + "/dashboard/(.*)", DashboardHandler),
    ])
    serverapp.log.info("casa page at %s/", base)
