"""The facility configuration shared by spawners, services and `casa render`, and what it issues.

``Facility`` is a traitlets ``Configurable``: operators set ``c.Facility.domain`` and
friends in ``jupyterhub_config.py``.  Key files are read once, on first use, and
kept in memory as :class:`~casa_hub.secrets.SecretBytes`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import string

from traitlets import Float, Int, List, Unicode, default, validate
from traitlets.config import SingletonConfigurable

from . import bundle as b
from . import metrics
from .audit import record_issuance
from .condor_token import check_key_id, check_trust_domain, make_idtoken, parse_authz
from .dask_tls import make_session_tls
from .errors import ConfigurationError, CredentialError
from .logs import attach_to_running_application
from .macaroon import DEFAULT_MAX_LIFETIME, decode_secret, make_macaroon, parse_activities
from .names import UserNames, user_names, validate_domain
from .secrets import SecretBytes, read_secret_file

TEMPLATE_FIELDS = ("username", "slug", "domain", "trust_domain")
#: what HTCondor takes as an OAuth service name (``use_oauth_services``; ``_`` would start a handle)
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
#: the key file that signs each renewable kind of credential
KEY_TRAITS = {"condor-token": "signing_key_file", "xcache-token": "macaroon_secret_file"}


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def _check_template(value: str, trait: str) -> str:
    for _, field_name, _, _ in string.Formatter().parse(value):
        if field_name is not None and field_name not in TEMPLATE_FIELDS:
            raise ConfigurationError(
                f"Facility.{trait}: unknown field {{{field_name}}}; use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            )
    return value


class Facility(SingletonConfigurable):
    """What every user of the facility gets, in one place.

    Spawners and services share one instance -- ``Facility.instance(config=self.config)``
    -- so key files are read once per hub, not once per user.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        attach_to_running_application()  # the audit lines this issues reach the hub's log

    domain = Unicode(
        "localhost",
        config=True,
        help="""Domain under which user schedulers are named: ``<slug>.dask.<domain>``.

        Example: ``c.Facility.domain = "coffea.casa"`` gives ``tls://alice.dask.coffea.casa:8786``.
        A wildcard DNS record ``*.dask.<domain>`` must point at Traefik's ``dask`` entry point.
        """,
    )
    dask_port = Int(8786, config=True, help="Public port of Traefik's ``dask`` entry point (TLS passthrough).")
    scheduler_port = Int(8786, config=True, help="Port the scheduler sidecar listens on inside the session.")
    dashboard_port = Int(8787, config=True, help="Port of the scheduler's dashboard (reached through jupyter-server-proxy).")

    trust_domain = Unicode(
        config=True,
        help="""HTCondor ``TRUST_DOMAIN`` of the pool; becomes the IDTOKEN's ``iss``.

        Must match the pool's setting exactly or clients never offer the token.
        Example: ``c.Facility.trust_domain = "cms-af.unl.edu"``. Defaults to ``domain``.
        """,
    )

    @default("trust_domain")
    def _default_trust_domain(self):
        return self.domain

    collector_host = Unicode("", config=True, help="HTCondor collector (``_CONDOR_COLLECTOR_HOST``), e.g. ``red-condor.unl.edu:9619``.")
    schedd_host = Unicode("", config=True, help="HTCondor schedd name (``_CONDOR_SCHEDD_HOST``) where workers are submitted.")
    data_token_service = Unicode(
        "",
        config=True,
        help="""Keep each user's data token (``BEARER_TOKEN_FILE``: the macaroon, or the IdP token) fresh
        inside their running HTCondor workers through the pool's ``condor_credd``: the hub stores it as
        the user (``condor_store_cred add-oauth -P -s <service>``) when a session starts and after every
        renewal, and worker jobs ask for it (``use_oauth_services = <service>``), so the starter copies
        each new token into ``$_CONDOR_CREDS/<service>.use`` of every running job within the pool's
        ``SEC_CREDENTIAL_REFRESH``.  The pool needs a credd (``CREDD`` in its ``DAEMON_LIST``,
        ``SEC_CREDENTIAL_DIRECTORY_OAUTH``).  Empty: off -- the token is spooled once with each worker
        job and is not renewed in running workers, which lose data access when it expires.

        Example: ``c.Facility.data_token_service = "xcache"``""",
    )
    credd_host = Unicode(
        "",
        config=True,
        help="""The credd that keeps the data tokens (``CREDD_HOST`` of ``condor_store_cred``): its name in the
        collector or ``host:port``, usually on the schedd's machine.  Empty: HTCondor's own default (the
        hub's ``CONDOR_CONFIG``'s ``CREDD_HOST``, else a credd on the hub's machine).

        Example: ``c.Facility.credd_host = "t3.unl.edu"``""",
    )
    signing_key_file = Unicode(
        "",
        config=True,
        help="""HTCondor signing-key file (``SEC_TOKEN_POOL_SIGNING_KEY_FILE`` or a file in
        ``SEC_PASSWORD_DIRECTORY``), mode 0600, mounted only into the hub.
        Example: ``c.Facility.signing_key_file = "/etc/casa/secrets/POOL"``. Empty: no IDTOKENs.
        """,
    )
    signing_key_id = Unicode("POOL", config=True, help="Key id (``kid``) of the signing key: ``POOL`` or the key file's name.")
    condor_authz = List(
        Unicode(),
        ["READ", "WRITE"],
        config=True,
        help="""Authorizations in the IDTOKEN's ``scope`` (``condor:/<authz>``), e.g. ``["READ", "WRITE"]``.""",
    )
    condor_identity = Unicode(
        "{slug}@{trust_domain}",
        config=True,
        help="""Per-user HTCondor identity (``sub``); fields ``{username}``, ``{slug}``, ``{domain}``, ``{trust_domain}``.""",
    )
    condor_token_lifetime = Int(3 * 86400, config=True, help="Seconds an IDTOKEN lives; it is renewed after 2/3 of that.")

    macaroon_secret_file = Unicode(
        "",
        config=True,
        help="""XRootD ``macaroons.secretkey`` file (base64, >= 32 bytes decoded), mode 0600.
        Example: ``c.Facility.macaroon_secret_file = "/etc/casa/secrets/macaroon-secret"``. Empty: no XCache tokens.
        """,
    )
    xcache_site = Unicode("", config=True, help="XCache ``all.sitename``; the macaroon's location, e.g. ``T2_US_Nebraska``. Empty: ``domain``.")
    xcache_host = Unicode("", config=True, help="""XCache address given to the notebook (and its workers) as ``XCACHE_HOST``:
        ``root://host:port`` or ``https://host:port``, e.g. ``root://red-xcache1.unl.edu:1094``.""")
    xcache_https_host = Unicode(
        "",
        config=True,
        help="""The XCache's HTTPS endpoint where it is not ``xcache_host``'s host:port, given as ``XCACHE_HTTPS_HOST``,
        e.g. ``https://xcache.example.org:8443``.  Empty: HTTPS on ``xcache_host``'s host and port (XRootD serves
        ``root://`` and HTTPS on one port).""",
    )
    xcache_activities = List(Unicode(), ["READ_METADATA", "DOWNLOAD", "LIST"], config=True, help="XRootD activities granted by the macaroon.")
    xcache_paths = List(
        Unicode(),
        ["/store"],
        config=True,
        help="""The path prefix the macaroon allows (directory-wise match), as a one-element list;
        templates allowed, e.g. ``["/store/user/{username}"]`` so users cannot read each
        other's areas.  XRootD ANDs ``path:`` caveats, so one token can carry only one prefix.""",
    )
    xcache_token_name = Unicode(
        "{slug}",
        config=True,
        help="""The macaroon's ``name:`` caveat (template).  XRootD records it as the request's user
        name; the default ``{slug}`` is always a valid caveat, where a username may hold spaces (DNs).""",
    )
    xcache_token_lifetime = Int(12 * 3600, config=True, help="Seconds a macaroon lives; at most ``xcache_max_lifetime``.")
    xcache_max_lifetime = Int(DEFAULT_MAX_LIFETIME, config=True, help="The XRootD server's ``macaroons.maxduration`` (86400 by default).")

    tls_lifetime = Int(7 * 86400, config=True, help="Seconds the session's Dask certificates live (the CA key is discarded, so they are not renewed).")
    renew_fraction = Float(2 / 3, config=True, help="Re-issue a credential once this fraction of its life has passed.")

    @validate("domain")
    def _validate_domain(self, proposal):
        return validate_domain(proposal["value"])

    @validate("condor_authz")
    def _validate_authz(self, proposal):
        try:
            return list(parse_authz(proposal["value"]))
        except CredentialError as e:
            raise ConfigurationError(f"Facility.condor_authz: {e}") from None

    @validate("xcache_host", "xcache_https_host")
    def _validate_xcache_address(self, proposal):
        value, name = proposal["value"].strip().rstrip("/"), proposal["trait"].name
        if not value:
            return value
        schemes = ("https",) if name == "xcache_https_host" else ("root", "roots", "https")
        scheme, _, rest = value.partition("://")
        host = rest.rsplit("@", 1)[-1]
        if scheme not in schemes or not host or "/" in host or any(c.isspace() for c in host):
            raise ConfigurationError(f"Facility.{name}={proposal['value']!r}: expected {' or '.join(s + '://host:port' for s in schemes)}"
                                     " (plain http:// would carry the token in clear)")
        return value

    @validate("xcache_activities")
    def _validate_activities(self, proposal):
        try:
            return list(parse_activities(proposal["value"]))
        except CredentialError as e:
            raise ConfigurationError(f"Facility.xcache_activities: {e}") from None

    @validate("condor_identity", "xcache_token_name")
    def _validate_template(self, proposal):
        return _check_template(proposal["value"], proposal["trait"].name)

    @validate("xcache_paths")
    def _validate_paths(self, proposal):
        paths = [_check_template(p, "xcache_paths") for p in proposal["value"]]
        if len(paths) != 1:
            raise ConfigurationError(
                f"Facility.xcache_paths must hold exactly one prefix, got {paths}: XRootD requires every "
                "path: caveat of a macaroon to match, so several prefixes would authorise nothing"
            )
        return paths

    @validate("xcache_token_lifetime", "xcache_max_lifetime")
    def _validate_xcache_lifetime(self, proposal):
        # checked whichever of the two changes: a lower maxduration alone must not pass until a spawn
        value = proposal["value"]
        token, most = (value, self.xcache_max_lifetime) if proposal["trait"].name == "xcache_token_lifetime" else (self.xcache_token_lifetime, value)
        if not 0 < token <= most:
            raise ConfigurationError(f"Facility.xcache_token_lifetime={token} must be within (0, xcache_max_lifetime={most}]")
        return value

    @validate("condor_token_lifetime", "tls_lifetime")
    def _validate_lifetime(self, proposal):
        if proposal["value"] <= 0:
            raise ConfigurationError(f"Facility.{proposal['trait'].name}={proposal['value']} must be a positive number of seconds")
        return proposal["value"]

    @validate("dask_port", "scheduler_port", "dashboard_port")
    def _validate_port(self, proposal):
        if not 0 < proposal["value"] < 65536:
            raise ConfigurationError(f"Facility.{proposal['trait'].name}={proposal['value']} is not a TCP port (1-65535)")
        return proposal["value"]

    @validate("renew_fraction")
    def _validate_renew_fraction(self, proposal):
        if not 0 < proposal["value"] < 1:
            raise ConfigurationError(
                f"Facility.renew_fraction={proposal['value']} must lie between 0 and 1 (0.667: renew after 2/3 of a credential's life)"
            )
        return proposal["value"]

    @validate("data_token_service")
    def _validate_service(self, proposal):
        value = proposal["value"]
        if value and not SERVICE_NAME.fullmatch(value):
            raise ConfigurationError(
                f"Facility.data_token_service={value!r} is not an HTCondor OAuth service name (letters, digits and '-'; "
                "HTCondor reads '_' as the start of a handle), e.g. \"xcache\"")
        return value

    @validate("signing_key_id", "trust_domain")
    def _validate_condor_name(self, proposal):
        check = check_key_id if proposal["trait"].name == "signing_key_id" else check_trust_domain
        try:
            return check(proposal["value"])
        except CredentialError as e:
            raise ConfigurationError(f"Facility.{proposal['trait'].name}: {e}") from None

    # -- secrets, read once -------------------------------------------------

    _signing_key: SecretBytes | None = None
    _macaroon_secret: SecretBytes | None = None
    #: per key file: (device, inode, size, mtime_ns) of the file last read, and the issue time of the
    #: last credential the previous key signed (None until a rotation is seen)
    _key_stamps: dict

    def _key_file_changed(self, trait: str) -> bool:
        """Whether the key file named by ``trait`` is not the one last read (a rotation: a new file, or a
        Kubernetes Secret volume that swapped its ``..data`` link); it is then read again."""
        path = getattr(self, trait)
        stamps = self.__dict__.setdefault("_key_stamps", {})
        try:
            st = os.stat(path)
        except OSError:  # gone: keep the key in memory; read_secret_file says why if it must be read
            return trait not in stamps
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if trait not in stamps:  # the first read: no rotation is known, nothing issued so far is "old"
            stamps[trait] = (stamp, None)
            return True
        if stamps[trait][0] == stamp:
            return False
        # a rotation: whatever the previous key signed (up to its last issue) is now old
        stamps[trait] = (stamp, self.__dict__.get("_last_signed", {}).get(trait))
        return True

    def old_key_signed_until(self, kind: str) -> dt.datetime | None:
        """Once the key that signs credentials of ``kind`` was rotated while this hub ran: the issue time of
        the last credential the previous key signed.  Those (issued then or earlier) are re-issued at the
        next renewal check.  None until a rotation is seen."""
        entry = self.__dict__.get("_key_stamps", {}).get(KEY_TRAITS.get(kind))
        return entry[1] if entry else None

    def _signed(self, kind: str, issued_at: dt.datetime) -> None:
        self.__dict__.setdefault("_last_signed", {})[KEY_TRAITS[kind]] = issued_at

    @property
    def issues_condor_tokens(self) -> bool:
        return bool(self.signing_key_file)

    @property
    def issues_xcache_tokens(self) -> bool:
        return bool(self.macaroon_secret_file)

    @property
    def stores_data_tokens(self) -> bool:
        """True when users' data tokens are kept in the pool's credd for their jobs (``data_token_service``)."""
        return bool(self.data_token_service) and self.issues_condor_tokens

    def signing_key(self) -> SecretBytes:
        if self._key_file_changed("signing_key_file") or self._signing_key is None:
            self._signing_key = SecretBytes(read_secret_file(self.signing_key_file, "HTCondor signing key"), "signing key")
        return self._signing_key

    def macaroon_secret(self) -> SecretBytes:
        if self._key_file_changed("macaroon_secret_file") or self._macaroon_secret is None:
            raw = read_secret_file(self.macaroon_secret_file, "macaroon secret")
            self._macaroon_secret = SecretBytes(decode_secret(raw), "macaroon secret")
        return self._macaroon_secret

    def load_secrets(self) -> None:
        """Read the configured key files now (once; later calls use memory), so a bad file fails with its
        ConfigurationError before anything is issued -- e.g. from a spawner, in a thread, before its first issue."""
        if self.issues_condor_tokens:
            self.signing_key()
        if self.issues_xcache_tokens:
            self.macaroon_secret()

    # -- per-user values ----------------------------------------------------

    def _signed_by_old_key(self, cred: b.CredentialFile) -> bool:
        # issue times have whole seconds: one issued under the new key in the same second as the old key's
        # last one is re-issued too (within that second only)
        until = self.old_key_signed_until(cred.kind)
        return until is not None and cred.issued_at is not None and cred.issued_at <= until

    def names(self, username: str) -> UserNames:
        return user_names(username, self.domain, self.dask_port)

    def _fields(self, username: str) -> dict:
        return {
            "username": username,
            "slug": self.names(username).slug,
            "domain": self.domain,
            "trust_domain": self.trust_domain,
        }

    def condor_identity_of(self, username: str) -> str:
        """The user's HTCondor identity (the IDTOKEN's ``sub``), e.g. ``alice@cms-af.unl.edu``."""
        return self.condor_identity.format(**self._fields(username))

    def condor_token_file(self, username: str, now: dt.datetime, lifetime: int | None = None) -> b.CredentialFile:
        """The user's IDTOKEN file; ``lifetime`` None: ``condor_token_lifetime`` (shorter for a one-off
        task, e.g. removing a stopped session's jobs)."""
        issued = make_idtoken(
            self.signing_key().reveal(),
            trust_domain=self.trust_domain,
            identity=self.condor_identity_of(username),
            kid=self.signing_key_id,
            authz=self.condor_authz,
            lifetime=self.condor_token_lifetime if lifetime is None else lifetime,
            issued_at=int(now.timestamp()),
        )
        record_issuance(username, "condor-idtoken", issued.expires_at, issued.token_id)
        self._signed("condor-token", _utc(issued.issued_at))
        return b.CredentialFile(
            b.CONDOR_TOKEN_PATH,
            issued.token.encode() + b"\n",
            "condor-token",
            frozenset({b.NOTEBOOK}),
            issued_at=_utc(issued.issued_at),
            expires_at=_utc(issued.expires_at),
        )

    def xcache_token_file(self, username: str, now: dt.datetime) -> b.CredentialFile:
        fields = self._fields(username)
        issued = make_macaroon(
            self.macaroon_secret().reveal(),
            location=self.xcache_site or self.domain,
            name=self.xcache_token_name.format(**fields),
            activities=self.xcache_activities,
            paths=[p.format(**fields) for p in self.xcache_paths],
            lifetime=self.xcache_token_lifetime,
            max_lifetime=self.xcache_max_lifetime,
            now=now,
        )
        record_issuance(username, "xcache-macaroon", issued.expires_at, issued.identifier)
        self._signed("xcache-token", now.replace(microsecond=0))
        return b.CredentialFile(
            b.BEARER_TOKEN_PATH,
            issued.token.encode() + b"\n",
            "xcache-token",
            frozenset({b.NOTEBOOK, b.WORKER}),
            issued_at=now.replace(microsecond=0),
            expires_at=issued.expires_at,
        )

    def bearer_token_file(self, username: str, access_token: str, expires_at: dt.datetime | None, now) -> b.CredentialFile:
        """The IdP access token as a WLCG bearer-token file (used when no XCache secret is set)."""
        record_issuance(username, "wlcg-bearer", expires_at, None)
        return b.CredentialFile(
            b.BEARER_TOKEN_PATH,
            access_token.strip().encode() + b"\n",
            "bearer-token",
            frozenset({b.NOTEBOOK, b.WORKER}),
            issued_at=now.replace(microsecond=0),
            expires_at=expires_at,
        )

    def tls_files(self, username: str, now: dt.datetime) -> list[b.CredentialFile]:
        host = self.names(username).scheduler_host
        tls = make_session_tls(host, lifetime=self.tls_lifetime, now=now)
        record_issuance(username, "dask-tls", tls.expires_at, host)
        common = dict(issued_at=now.replace(microsecond=0), expires_at=tls.expires_at)
        return [
            b.CredentialFile(b.DASK_CA_PATH, tls.ca_pem, "dask-ca", frozenset({b.NOTEBOOK, b.SCHEDULER, b.WORKER}), mode=0o644, **common),
            b.CredentialFile(b.DASK_CLIENT_PATH, tls.client_pem, "dask-client", frozenset({b.NOTEBOOK}), **common),
            b.CredentialFile(b.DASK_WORKER_PATH, tls.worker_pem, "dask-worker", frozenset({b.NOTEBOOK, b.WORKER}), **common),
            b.CredentialFile(b.DASK_SCHEDULER_PATH, tls.scheduler_pem, "dask-scheduler", frozenset({b.SCHEDULER}), **common),
        ]

    def issue_bundle(
        self,
        username: str,
        *,
        access_token: str | None = None,
        access_token_expires_at: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> b.CredentialBundle:
        """Every credential one session needs (pure apart from the audit log)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        with metrics.spawn_step("issue-credentials"):
            files = list(self.tls_files(username, now))
            if self.issues_condor_tokens:
                files.append(self.condor_token_file(username, now))
            if self.issues_xcache_tokens:
                files.append(self.xcache_token_file(username, now))
            elif access_token:
                files.append(self.bearer_token_file(username, access_token, access_token_expires_at, now))
        bundle = b.CredentialBundle(tuple(files))
        metrics.issued(bundle)
        return bundle

    def renew_bundle(
        self,
        username: str,
        bundle: b.CredentialBundle,
        *,
        access_token: str | None = None,
        access_token_expires_at: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> b.CredentialBundle | None:
        """A bundle with every token past ``renew_fraction`` of its life re-issued, or None if none is due.

        TLS files are never renewed (their CA key is gone); the IdP token is replaced
        only when a fresher one is given.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        renewed = []
        reissue = {"condor-token": self.condor_token_file, "xcache-token": self.xcache_token_file}
        if self.issues_condor_tokens:
            self.signing_key()  # notices a rotated key file (read again) before deciding what is due
        if self.issues_xcache_tokens:
            self.macaroon_secret()
        for cred in bundle.files:
            if cred.kind in reissue and (cred.renewal_due(now, self.renew_fraction) or self._signed_by_old_key(cred)):
                try:
                    renewed.append(reissue[cred.kind](username, now))
                except (ConfigurationError, CredentialError) as e:
                    metrics.renewal_failed(cred.kind, "key-file" if isinstance(e, ConfigurationError) else "credential")
                    raise
        current = bundle.get(b.BEARER_TOKEN_PATH)
        if access_token and current is not None and current.kind == "bearer-token":
            if current.content.strip() != access_token.strip().encode():
                renewed.append(self.bearer_token_file(username, access_token, access_token_expires_at, now))
        for cred in renewed:
            metrics.renewed(cred.kind)
        return bundle.replacing(*renewed) if renewed else None
