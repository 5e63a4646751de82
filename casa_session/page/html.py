"""The casa page's HTML (pure: values in, escaped HTML out)."""

from __future__ import annotations

import datetime as dt
from html import escape

from .bundle import bundle_name
from .info import SessionInfo

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 56em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
code, pre { background: #f3f3f3; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; } td, th { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
.download { display: inline-block; padding: 0.5em 1em; background: #2b6cb0; color: white; border-radius: 4px; text-decoration: none; }
.note { color: #555; font-size: 0.92em; }
"""


def render_page(info: SessionInfo | None, *, bundle_url: str, user: str, now: dt.datetime | None = None) -> str:
    e = escape
    if info is None:
        body = "<h1>casa</h1><p>This notebook server is not running in a casa session: there is no scheduler or credential to show.</p>"
        return _page(body)
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = "".join(
        f"<tr id='cred-{e(c.path.replace('/', '-'))}'><td>{e(c.label)}</td><td><code>{e(c.path)}</code></td>"
        f"<td class='expires'>{e(c.expires_at.strftime('%Y-%m-%d %H:%M:%S UTC')) if c.expires_at else '-'}</td>"
        f"<td>{e(c.remaining(now))}</td></tr>"
        for c in info.credentials
    )
    dashboard = (f"<a id='dashboard' href='{e(info.dashboard_link)}' target='_blank'>{e(info.dashboard_link)}</a>"
                 if info.dashboard_link else "<span id='dashboard'>not published for this session</span>")
    if info.connect_host:
        route = (f"<p class='note'>The name <code>{e(info.sni)}</code> is not in DNS here: connect to "
                 f"<code id='connect-address'>{e(info.connect_address)}</code> and send the name as TLS SNI "
                 "(Traefik routes on it). The bundle's snippet and <code>casa connect</code> do that.</p>")
    else:
        route = f"<p class='note'>Connect to <code id='connect-address'>{e(info.connect_address)}</code>.</p>"
    name = bundle_name(info)
    body = f"""
<h1>casa: {e(user)}'s session</h1>
<h2>Dask scheduler</h2>
<p>Public address: <code id="scheduler-address">{e(info.scheduler_address)}</code></p>
{route}
<p>Dashboard: {dashboard}</p>
<h2>Credentials</h2>
<table id="credentials"><tr><th>credential</th><th>file</th><th>expires</th><th>left</th></tr>{rows}</table>
<h2>From your laptop</h2>
<p><a class="download" id="bundle" href="{e(bundle_url)}" download="{e(name)}">Download the client bundle</a>
<span class="note">the session CA, your client certificate and key, a connection snippet; never the scheduler's key or a token</span></p>
<pre>pip install 'jupyterhub-casa[session]'
casa connect {e(name)}
# or, with only distributed installed:
unzip {e(name)} -d casa-bundle &amp;&amp; cd casa-bundle &amp;&amp; python connect.py</pre>
<p class="note">The bundle admits to this session's scheduler only, until its certificates expire
({e(info.bundle_expires_at.strftime('%Y-%m-%d %H:%M UTC')) if info.bundle_expires_at else '?'}). Keep it to yourself.</p>
"""
    return _page(body)


def _page(body: str) -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>casa</title><style>{STYLE}</style></head><body>{body}</body></html>"
