"""The client bundle a physicist downloads from the casa page: what a laptop needs to reach the scheduler.

A zip of exactly:

* ``ca.pem`` -- the session's CA certificate (verifies the scheduler);
* ``client.pem`` -- the session's client certificate and its key (the scheduler admits it);
* ``casa-connection.json`` -- the public address, the address to dial and the SNI name;
* ``connect.py`` -- a connection snippet that needs only ``distributed``;
* ``README.txt``.

Never the scheduler's certificate, the worker certificate or a token: the bundle admits a
client to this session's scheduler and nothing else.  ``casa connect BUNDLE`` (:mod:`casa_session.connect`)
or ``python connect.py`` inside the unpacked bundle gives a connected ``Client``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from .info import SessionInfo

#: the bundle's members, and the credential files (relative to $CASA_CREDENTIALS) they come from
FROM_CREDENTIALS = {"ca.pem": "dask/ca.pem", "client.pem": "dask/client.pem"}
CONNECTION_FILE = "casa-connection.json"

CONNECT_SNIPPET = '''"""Connect to your casa session's Dask scheduler from anywhere (needs: pip install distributed).

    python connect.py            # prints the connected Client
    python -i connect.py         # ... and keeps it as `client`
"""
import json
import pathlib

from distributed import Client
from distributed.security import Security

here = pathlib.Path(__file__).resolve().parent
info = json.loads((here / "casa-connection.json").read_text())


class SNISecurity(Security):
    """Sends the scheduler's name as TLS SNI (Traefik routes on it) when dialling the facility's address."""

    def get_connection_args(self, role):
        args = super().get_connection_args(role)
        args["server_hostname"] = info["sni"]
        return args


security = SNISecurity(require_encryption=True, tls_ca_file=str(here / "ca.pem"),
                       tls_client_cert=str(here / "client.pem"), tls_client_key=str(here / "client.pem"))
client = Client(info["connect_address"], security=security, timeout="30s")
print(client)
'''

README = """Your casa session's Dask scheduler, from your laptop.

Scheduler: {address}
Dial:      {connect} (TLS, the scheduler's name {sni} sent as SNI)
Valid until {expires} (the session's certificates expire then; download a new bundle from a new session).

With jupyterhub-casa installed:   casa connect {name}
With only distributed installed:  unzip {name}; python connect.py

client.pem holds your private key: keep the bundle to yourself (it admits to your session only).
"""


def bundle_name(info: SessionInfo) -> str:
    return f"casa-bundle-{info.sni.split('.', 1)[0] or 'session'}.zip"


def build_bundle(info: SessionInfo) -> bytes:
    """The zip's bytes (reads the two certificate files now)."""
    root = Path(info.credentials_dir)
    expires = info.bundle_expires_at
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, rel in FROM_CREDENTIALS.items():
            zf.writestr(_member(member, 0o600 if member == "client.pem" else 0o644), (root / rel).read_bytes())
        zf.writestr(_member(CONNECTION_FILE, 0o644), json.dumps(info.connection(), indent=2) + "\n")
        zf.writestr(_member("connect.py", 0o644), CONNECT_SNIPPET)
        zf.writestr(_member("README.txt", 0o644), README.format(
            address=info.scheduler_address, connect=info.connect_address, sni=info.sni,
            expires=expires.strftime("%Y-%m-%d %H:%M UTC") if expires else "?", name=bundle_name(info)))
    return out.getvalue()


def _member(name: str, mode: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    zi.external_attr = (0o100000 | mode) << 16  # unzip keeps the key 0600
    zi.compress_type = zipfile.ZIP_DEFLATED
    return zi
