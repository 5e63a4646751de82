"""``casa connect BUNDLE``: a connected Dask ``Client`` from a casa page's client bundle.

Works on a laptop with only the session's dependencies (``distributed``): the bundle (the zip
or the directory it unpacks to) holds the CA, the client certificate and key, and where to dial.
They are read into memory and handed to distributed as PEM contents (it writes them to a
private temporary directory only while it builds a TLS context).  When the scheduler's name does
not resolve (no wildcard DNS), the bundle says to dial the facility's address and send the name as
TLS SNI; ``--connect-host`` overrides where to dial.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from casa_hub.errors import CasaError

NEEDED = ("ca.pem", "client.pem", "casa-connection.json")


class BundleError(CasaError):
    """The file is not a casa client bundle, or a part is missing."""


@dataclass(frozen=True)
class Bundle:
    scheduler_address: str  #: ``tls://<slug>.dask.<domain>:<port>``
    connect_address: str  #: where to dial (the same, or the facility's address)
    sni: str
    ca_pem: str = field(repr=False)
    client_pem: str = field(repr=False)

    @property
    def connect_host(self) -> str:
        """The host to dial instead of the name ('' when the bundle dials the name itself)."""
        return "" if self.connect_address == self.scheduler_address else urlsplit(self.connect_address).hostname


def read_bundle(path: os.PathLike | str) -> Bundle:
    """The bundle at ``path`` (a zip, or the directory it unpacks to)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    if path.is_dir():
        read = {name: (path / name).read_bytes() for name in NEEDED if (path / name).is_file()}
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                read = {name: zf.read(name) for name in NEEDED if name in names}
        except zipfile.BadZipFile:
            raise BundleError(f"{path} is not a casa client bundle (not a zip file); download it from your casa page") from None
    missing = [name for name in NEEDED if name not in read]
    if missing:
        raise BundleError(f"{path} is not a complete casa client bundle: {', '.join(missing)} missing")
    try:
        info = json.loads(read["casa-connection.json"])
        return Bundle(info["scheduler_address"], info["connect_address"], info["sni"],
                      read["ca.pem"].decode(), read["client.pem"].decode())
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{path}: casa-connection.json is not a casa connection description") from None


NEEDS_DISTRIBUTED = "casa connect needs distributed: pip install 'jupyterhub-casa[session]'"


def connection_of(bundle: Bundle, connect_host: str = ""):
    """The bundle as a :class:`~casa_session.cluster.SchedulerConnection` (PEM contents in place of file names)."""
    try:
        from .cluster import SchedulerConnection
    except ImportError:  # casa_session.cluster is distributed's
        raise CasaError(NEEDS_DISTRIBUTED) from None

    return SchedulerConnection(
        address=bundle.scheduler_address, ca_file=bundle.ca_pem, client_cert=bundle.client_pem,
        client_key=bundle.client_pem, worker_cert="", worker_key="", connect_host=connect_host or bundle.connect_host,
    )


def connect(path: os.PathLike | str, *, connect_host: str = "", timeout: str = "30s"):
    """A connected ``distributed.Client`` for the bundle's scheduler (the caller closes it)."""
    connection = connection_of(read_bundle(path), connect_host)
    from distributed import Client

    return Client(connection.connect_address, security=connection.security("client"), timeout=timeout)


def _run(args) -> int:
    connection = connection_of(read_bundle(args.bundle), args.connect_host)
    try:
        client = connect(args.bundle, connect_host=args.connect_host, timeout=args.timeout)
    except OSError as e:  # refused, unreachable, timed out
        raise CasaError(f"could not connect with {args.bundle} to {connection.connect_address} as {connection.sni}: {e}") from None
    with client:
        print(f"dialled {connection.connect_address}, TLS SNI {connection.sni}: {client}")
        if args.compute:
            print(f"sum(range(100)) on the workers = {client.submit(sum, range(100)).result(timeout=60)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "connect",
        help="connect to your session's Dask scheduler with the client bundle from your casa page",
        description="Print a connected Dask Client for the scheduler of a casa client bundle (zip or unpacked directory).",
    )
    p.add_argument("bundle", help="casa-bundle-<you>.zip, downloaded from /user/<you>/casa/")
    p.add_argument("--connect-host", default="", metavar="HOST",
                   help="dial HOST instead of what the bundle says (the scheduler's name is still sent as SNI)")
    p.add_argument("--timeout", default="30s", help="how long to try (default 30s)")
    p.add_argument("--compute", action="store_true", help="also run one small task on the session's workers")
    p.set_defaults(func=_run)
