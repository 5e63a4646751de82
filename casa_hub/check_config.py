"""``casa check-config jupyterhub_config.py``: every problem of a hub's configuration, before a user meets it.

The file is loaded as ``jupyterhub -f`` loads it (traitlets' ``PyFileConfigLoader``: ``c``,
``get_config()`` and ``load_subconfig`` exist), then checked.  The facility's own checks are
here; the other packages add theirs through the ``casa.checks`` entry-point group -- each entry
a function ``check(report)`` (may be async) that calls ``report.problem(...)`` and
``report.note(...)`` -- so this module never imports a spawner or an authenticator.  Each
problem is one line; any problem means exit status 1.  Key files are read (to check them) but
never printed; credentials for the sample user are minted with throwaway keys.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
import secrets
import string
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

from traitlets.config import Config, Configurable, PyFileConfigLoader

from .errors import CasaError, ConfigurationError
from .facility import TEMPLATE_FIELDS, Facility
from .macaroon import decode_secret
from .secrets import read_secret_file

log = logging.getLogger("casa.check")

#: shortest signing key accepted: HTCondor's own keys are far longer; fewer bytes are guessable
MIN_SIGNING_KEY_BYTES = 32
#: a username with what real ones hold (a dot, capitals): templates must expand for it
DEFAULT_SAMPLE_USER = "Jane.Doe"
#: traits set before the others, so that a pair checked together sees its partner's configured value
FIRST_TRAITS = ("domain", "xcache_max_lifetime")


@dataclass
class CheckReport:
    """What the checks found: problems (each one line) and notes for the summary."""

    path: str
    config: Config
    sample_user: str = DEFAULT_SAMPLE_USER
    online: bool = False
    traefik_crds: list[str] = field(default_factory=list)
    facility: Facility | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(" ".join(str(text).split()))

    def note(self, text: str) -> None:
        self.notes.append(" ".join(str(text).split()))


# -- reading what the hub would read ---------------------------------------------------------


def load_config_file(path: str) -> Config:
    """The config ``jupyterhub -f path`` would run with (the file's own side effects included)."""
    config_file = Path(path)
    if not config_file.is_file():
        raise ConfigurationError(f"config file {path} does not exist")
    return PyFileConfigLoader(config_file.name, path=str(config_file.parent.resolve())).load_config()


def configured_value(config: Config, cls: type, name: str):
    """The value ``cls(config=config).<name>`` would have, without making one: the most specific
    section of the class's MRO that sets it wins (as traitlets' own loading does), else the default."""
    value = cls.class_traits()[name].default()
    for klass in reversed(cls.mro()):
        if isinstance(klass, type) and issubclass(klass, Configurable) and klass.__name__ in config:
            section = config[klass.__name__]
            if name in section:
                value = section[name]
    return value


def resolve_class(value, group: str) -> type:
    """The class a ``JupyterHub.*_class`` setting names: a class, an entry-point name of ``group``, or a dotted path."""
    if isinstance(value, type):
        return value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{value!r} is not a class")
    for ep in entry_points(group=group):
        if ep.name == value:
            return ep.load()
    module, _, name = value.rpartition(".")
    if not module:
        raise ConfigurationError(f"{value!r} is neither a {group} entry point nor a dotted class name")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"{value!r} cannot be imported: {e}") from None


# -- the facility --------------------------------------------------------------------------------


def _facility_from(report: CheckReport) -> Facility:
    """A Facility with every configured value that passes its own validation; each refusal is a problem."""
    facility = Facility()
    section = report.config.Facility if "Facility" in report.config else {}
    names = sorted(section, key=lambda n: (n not in FIRST_TRAITS, FIRST_TRAITS.index(n) if n in FIRST_TRAITS else 0, n))
    for name in names:
        if name not in facility.traits(config=True):
            report.problem(f"Facility.{name} is not a setting of the facility (a typo?)")
            continue
        try:
            setattr(facility, name, section[name])
        except (CasaError, ValueError, TypeError) as e:  # traitlets' TraitError is a ValueError... and a TypeError
            message = str(e)
            report.problem(message if message.startswith("Facility.") or "Facility." in message else f"Facility.{name}: {message}")
    return facility


def _check_key_file(report: CheckReport, trait: str, path: str, label: str) -> None:
    try:
        data = read_secret_file(path, label)
    except ConfigurationError as e:
        report.problem(f"Facility.{trait}: {e}")
        return
    if trait == "macaroon_secret_file":
        try:
            decode_secret(data)
        except CasaError as e:
            report.problem(f"Facility.{trait}: {path}: {e}")
    elif len(data) < MIN_SIGNING_KEY_BYTES:
        report.problem(f"Facility.{trait}: {label} file {path} holds {len(data)} bytes; use at least {MIN_SIGNING_KEY_BYTES} "
                       f"(e.g. openssl rand -base64 64 > {path})")


def _check_templates(report: CheckReport, facility: Facility) -> bool:
    """Each template expanded for the sample user; False if one does not (then nothing can be issued)."""
    before = len(report.problems)
    fields = {f: "x" for f in TEMPLATE_FIELDS}
    try:
        fields = facility._fields(report.sample_user)
    except (CasaError, ValueError) as e:
        report.problem(f"the sample user {report.sample_user!r} has no facility names: {e}")
    templates = [("condor_identity", facility.condor_identity), ("xcache_token_name", facility.xcache_token_name)]
    templates += [("xcache_paths", p) for p in facility.xcache_paths]
    for trait, template in templates:
        try:
            string.Formatter().format(template, **fields)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            report.problem(f"Facility.{trait} {template!r} does not expand for user {report.sample_user!r}: {type(e).__name__}: {e}")
    return len(report.problems) == before


def _throwaway_keys(facility: Facility, directory: Path) -> Facility:
    """A copy of ``facility`` whose key files are random: minting for the sample user never touches the real keys."""
    copy = Facility(**{name: getattr(facility, name) for name in facility.traits(config=True)})
    if facility.signing_key_file:
        key = directory / "POOL"
        key.write_bytes(secrets.token_bytes(64))
        copy.signing_key_file = str(key)
    if facility.macaroon_secret_file:
        key = directory / "macaroon-secret"
        key.write_bytes(base64.b64encode(secrets.token_bytes(32)))
        copy.macaroon_secret_file = str(key)
    for key in directory.iterdir():
        os.chmod(key, 0o600)
    return copy


def _check_issuance(report: CheckReport, facility: Facility) -> None:
    """Mint the sample user's bundle with throwaway keys: what a first spawn would trip on, found now."""
    with tempfile.TemporaryDirectory(prefix="casa-check-") as tmp:
        try:
            sample = _throwaway_keys(facility, Path(tmp))
            bundle = sample.issue_bundle(report.sample_user, access_token="sample-access-token")
        except (CasaError, ValueError, KeyError, IndexError, AttributeError) as e:
            report.problem(f"credentials for user {report.sample_user!r} cannot be issued: {e}")
            return
    kinds = ", ".join(sorted({f.kind for f in bundle.files if not f.kind.startswith("dask-")} | {"dask-tls"}))
    report.note(f"user {report.sample_user!r} gets {kinds}; scheduler {facility.names(report.sample_user).scheduler_address}")
    if facility.issues_condor_tokens:
        report.note(f"HTCondor identity {facility.condor_identity_of(report.sample_user)}, trust domain {facility.trust_domain}")


def renewal_window_problems(facility: Facility, interval: float, what: str) -> list[str]:
    """A credential must be renewable between two checks: its window after ``renew_fraction`` must outlast ``interval``."""
    problems, lifetimes = [], []
    if facility.issues_condor_tokens:
        lifetimes.append(("condor_token_lifetime", facility.condor_token_lifetime))
    if facility.issues_xcache_tokens:
        lifetimes.append(("xcache_token_lifetime", facility.xcache_token_lifetime))
    for trait, lifetime in lifetimes:
        window = lifetime * (1 - facility.renew_fraction)
        if window <= interval:
            problems.append(f"Facility.{trait}={lifetime}: with renew_fraction={facility.renew_fraction:.3g} it is renewed only "
                            f"{window:.0f}s before it expires, less than the {interval:g}s between renewal checks ({what})")
    return problems


def check_facility(report: CheckReport) -> None:
    facility = _facility_from(report)
    report.facility = facility
    if facility.issues_condor_tokens:
        _check_key_file(report, "signing_key_file", facility.signing_key_file, "HTCondor signing key")
    else:
        report.note("no Facility.signing_key_file: sessions get no HTCondor IDTOKEN")
    if facility.issues_xcache_tokens:
        _check_key_file(report, "macaroon_secret_file", facility.macaroon_secret_file, "macaroon secret")
    else:
        report.note("no Facility.macaroon_secret_file: the bearer token is the IdP's access token")
    if _check_templates(report, facility):
        _check_issuance(report, facility)


# -- running them all ---------------------------------------------------------------------------


async def run_checks(report: CheckReport) -> CheckReport:
    check_facility(report)
    for ep in sorted(entry_points(group="casa.checks"), key=lambda e: e.name):
        try:
            check = ep.load()
        except ImportError as e:  # an optional part is not installed: its settings cannot be in use
            log.debug("check %s unavailable: %s", ep.name, e)
            continue
        try:
            result = check(report)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except CasaError as e:
            report.problem(str(e))
    return report


def check_config(path: str, **options) -> CheckReport:
    """Load and check ``path``; a file that does not load is one problem (nothing else can be checked)."""
    try:
        config = load_config_file(path)
    except ConfigurationError as e:
        return CheckReport(path, Config(), problems=[str(e)])
    except Exception as e:  # the operator's Python: any error is theirs to read
        return CheckReport(path, Config(), problems=[f"loading {path} failed: {type(e).__name__}: {e}"])
    return asyncio.run(run_checks(CheckReport(path, config, **options)))


def _main(args) -> int:
    report = check_config(args.config, sample_user=args.user, online=args.online, traefik_crds=args.traefik_crds or [])
    for problem in report.problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if report.problems:
        print(f"{args.config}: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.config}: OK" + (" (online checks included)" if args.online else ""))
    for note in report.notes:
        print(f"  {note}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("check-config", help="load a jupyterhub_config.py as the hub would and report every problem")
    parser.add_argument("config", metavar="FILE", help="the hub's jupyterhub_config.py")
    parser.add_argument("--user", default=DEFAULT_SAMPLE_USER, help=f"sample username templates are expanded for ({DEFAULT_SAMPLE_USER})")
    parser.add_argument("--online", action="store_true",
                        help="also ask the IdP for its discovery document and ping the schedd with a freshly minted IDTOKEN")
    parser.add_argument("--traefik-crds", action="append", metavar="FILE",
                        help="Traefik's CRDs (kubectl get crd -o yaml, or the chart's crds/ file): the IngressRouteTCP group and "
                             "version must be defined there (repeatable; default: the groups Traefik 2.10+ and 3 define)")
    parser.set_defaults(func=_main)


__all__ = ["CheckReport", "check_config", "configured_value", "register", "resolve_class", "renewal_window_problems"]
