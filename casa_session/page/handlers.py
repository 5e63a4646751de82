"""The casa page's handlers: the page, the bundle download, and the way to the session's dashboard.

All are ``JupyterHandler`` s behind ``@web.authenticated`` and jupyter_server's ``@authorized``:
in a JupyterHub single-user server that is the hub's OAuth, so only users the hub lets into this
server get an answer.  None is cached by the browser (the bundle holds a private key).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from .bundle import build_bundle, bundle_name
from .html import render_page
from .info import session_info

AUTH_RESOURCE = "casa"


class _CasaHandler(JupyterHandler):
    auth_resource = AUTH_RESOURCE

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def info_or_none(self):
        try:
            return session_info()
        except LookupError as e:
            self.log.info("casa page: %s", e)
            return None


class PageHandler(_CasaHandler):
    @web.authenticated
    @authorized
    async def get(self):
        info = self.info_or_none()
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(render_page(info, bundle_url=self.base_url + "casa/bundle", user=self.current_user.username))


class BundleHandler(_CasaHandler):
    @web.authenticated
    @authorized
    async def get(self):
        info = self.info_or_none()
        if info is None:
            raise web.HTTPError(404, "no casa session here: nothing to download")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{bundle_name(info)}"')
        self.finish(build_bundle(info))


class DashboardHandler(_CasaHandler):
    """``casa/dashboard/<path>``: a redirect to ``<path>`` on the session's own Dask dashboard.

    The address stays the same from one session to the next while the dashboard's own (a port
    behind jupyter-server-proxy) may not, so JupyterLab's Dask sidebar can be given it once
    (``defaultURL``) and never keeps a stale one.
    """

    @web.authenticated
    @authorized
    async def get(self, path):
        info = self.info_or_none()
        link = info.dashboard_link if info else ""
        if not link:
            raise web.HTTPError(404, "this session publishes no Dask dashboard")
        base = link[: -len("status")] if link.endswith("/status") else link.rstrip("/") + "/"
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(base + path + query)
