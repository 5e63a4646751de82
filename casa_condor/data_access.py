"""What an HTCondor worker job gets to read data through the XCache (pure): addresses, the cache's CA, the user's token.

The contract with ``casa_session.xcache``, which derives everything else on the worker at run
time: a worker is given exactly :data:`WORKER_VARIABLES` about data access --

- ``XCACHE_HOST`` (and ``XCACHE_HTTPS_HOST`` where the facility sets one): the cache's address as
  configured, public, so set in the job's script;
- ``XCACHE_CA_FILE``: the CA that verifies the cache (public, not secret): the file travels with
  the job and the variable points at the sandbox copy;
- ``BEARER_TOKEN_FILE``: the user's data token, a 0600 file of the job's uid.  With a credd service
  (``Facility.data_token_service``) it is ``$_CONDOR_CREDS/<service>.use``, which the starter
  rewrites (rename over) every ``SEC_CREDENTIAL_REFRESH`` with the token the hub last stored;
  without one, the token is spooled once with the job, encrypted, and never renewed there.

The token itself is never in the job ad, the arguments, the environment of the ad or a log.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from casa_hub.facility import SERVICE_NAME

#: the variables about data access a worker is given: the names ``casa_session.xcache.WORKER_VARIABLES`` reads on the
#: worker (named again here because the gateway, in casa_spawner, may not import casa_session; a test checks they agree)
WORKER_VARIABLES = ("XCACHE_HOST", "XCACHE_HTTPS_HOST", "XCACHE_CA_FILE", "BEARER_TOKEN_FILE")
ADDRESS_VARIABLES = ("XCACHE_HOST", "XCACHE_HTTPS_HOST")
#: sandbox file names of what travels with the job
CA_FILE, TOKEN_FILE = "xcache-ca.pem", "bearer_token"
#: where the starter puts the stored tokens of a job's ``use_oauth_services``
CREDS_DIR = "$_CONDOR_CREDS"
#: what an address may hold: it is written into a shell line that every user of the pool can read
_ADDRESS = re.compile(r"^(root|roots|https|davs)://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._/-]*)?$")


class DataAccessError(ValueError):
    """A data-access setting that cannot be given to a worker job; the message says which."""


@dataclass(frozen=True)
class WorkerDataAccess:
    """A worker's data access: public addresses, the CA's bytes, and the token (bytes) or the credd service."""

    addresses: Mapping[str, str] = field(default_factory=dict)  #: ``XCACHE_HOST`` (, ``XCACHE_HTTPS_HOST``) -> address
    ca: bytes | None = field(default=None, repr=False)  #: the PEM file that verifies the cache, None: the system's CAs
    token: bytes | None = field(default=None, repr=False)  #: spooled once when there is no ``service``
    service: str = ""  #: the credd service the token comes from, refreshed in the running job

    def __post_init__(self):
        for name, value in self.addresses.items():
            if name not in ADDRESS_VARIABLES:
                raise DataAccessError(f"{name} is not an XCache address variable ({', '.join(ADDRESS_VARIABLES)})")
            if not _ADDRESS.match(value or ""):
                raise DataAccessError(f"{name}={value!r} is not an XCache address (root://, roots:// or https://host:port)")
        if self.service and not SERVICE_NAME.fullmatch(self.service):
            raise DataAccessError(f"{self.service!r} is not an HTCondor OAuth service name")

    @property
    def token_is_renewed(self) -> bool:
        """True when running workers get each renewed token (the credd), False when it travels once."""
        return bool(self.service)

    def files(self) -> dict[str, bytes]:
        """What travels with the job (spooled, encrypted): the CA, and the token when no credd serves it."""
        files = {}
        if self.ca is not None:
            files[CA_FILE] = self.ca
        if self.token is not None and not self.service:
            files[TOKEN_FILE] = self.token
        return files

    def directives(self) -> dict[str, str]:
        """Submit commands: the credd service the starter copies into the job."""
        return {"use_oauth_services": self.service} if self.service else {}

    def token_path(self, sandbox: str) -> str | None:
        """``BEARER_TOKEN_FILE`` as a shell word: the credd's copy, or the spooled file in ``sandbox``."""
        if self.service:
            return f'"{CREDS_DIR}/{self.service}.use"'
        return f'"{sandbox}/{TOKEN_FILE}"' if self.token is not None else None

    def export_lines(self, sandbox: str = "$PWD") -> list[str]:
        """``export`` lines for the job's shell, with paths under ``sandbox`` (a shell expression of the job's
        scratch directory).  Public values only: the session's job puts them into its Arguments."""
        lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(self.addresses.items())]
        if self.ca is not None:
            lines.append(f'export XCACHE_CA_FILE="{sandbox}/{CA_FILE}"')
        token = self.token_path(sandbox)
        if token:
            lines.append(f"export BEARER_TOKEN_FILE={token}")
        return lines
