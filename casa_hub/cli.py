"""The ``casa`` command: mint credentials, show names; other packages add subcommands.

Subcommands beyond ``mint`` and ``names`` come from the ``casa.commands`` entry-point
group: each entry is a function ``register(subparsers)`` that adds a parser whose
``func`` default takes the parsed arguments and returns an exit code.
Every :class:`~casa_hub.errors.CasaError` ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from . import check_config
from .condor_token import make_idtoken
from .dask_tls import make_session_tls
from .errors import CasaError
from .macaroon import BEFORE_FORMAT, DEFAULT_MAX_LIFETIME, decode_secret, make_macaroon
from .names import user_names
from .secrets import read_secret_file


def _mint_condor_token(args) -> int:
    key = read_secret_file(args.signing_key, "HTCondor signing key")
    issued = make_idtoken(
        key,
        trust_domain=args.trust_domain,
        identity=args.identity,
        kid=args.kid,
        authz=args.authz or ["READ", "WRITE"],
        lifetime=args.lifetime,
        issued_at=args.issued_at,
        token_id=args.token_id,
    )
    print(issued.token)
    return 0


def _parse_expires(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, BEFORE_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-mm-ddTHH:MM:SSZ, got {text!r}") from None


def _mint_xcache_token(args) -> int:
    secret = decode_secret(read_secret_file(args.secret_key, "macaroon secret"))
    issued = make_macaroon(
        secret,
        location=args.location,
        name=args.name,
        activities=args.activity,
        paths=args.path,
        lifetime=args.lifetime,
        expires=args.expires,
        identifier=args.identifier,
        max_lifetime=args.max_lifetime,
    )
    print(issued.token)
    return 0


def _mint_dask_tls(args) -> int:
    out = Path(args.out)
    tls = make_session_tls(args.hostname, lifetime=args.lifetime)
    from .bundle import CredentialBundle, CredentialFile

    files = [CredentialFile("ca.pem", tls.ca_pem, "dask-ca", mode=0o600)]
    files += [CredentialFile(f"{role}.pem", tls.role_pem(role), f"dask-{role}") for role in ("scheduler", "client", "worker")]
    for path in CredentialBundle(tuple(files)).write_to(out):
        print(path)
    return 0


def _names(args) -> int:
    print(json.dumps(user_names(args.username, args.domain, args.port).as_dict(), indent=2))
    return 0


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casa", description="jupyterhub-casa: analysis-facility tools")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (audit lines are INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    mint = sub.add_parser("mint", help="issue a credential").add_subparsers(dest="kind", required=True)

    ct = mint.add_parser("condor-token", help="an HTCondor IDTOKEN, as condor_token_create makes it")
    ct.add_argument("--signing-key", required=True, metavar="FILE")
    ct.add_argument("--trust-domain", required=True, type=_nonempty)
    ct.add_argument("--identity", required=True, type=_nonempty)
    ct.add_argument("--kid", default="POOL")
    ct.add_argument("--authz", action="append", metavar="A", help="repeatable; default READ and WRITE")
    ct.add_argument("--lifetime", type=int, default=86400, metavar="SECONDS")
    ct.add_argument("--issued-at", type=int, metavar="EPOCH")
    ct.add_argument("--token-id", metavar="HEX")
    ct.set_defaults(func=_mint_condor_token)

    xt = mint.add_parser("xcache-token", help="an XRootD/XCache macaroon")
    xt.add_argument("--secret-key", required=True, metavar="FILE")
    xt.add_argument("--location", required=True, type=_nonempty, metavar="SITE")
    xt.add_argument("--name", required=True, type=_nonempty)
    xt.add_argument("--activity", required=True, metavar="A[,B...]")
    xt.add_argument("--path", required=True, action="append", metavar="PREFIX")
    when = xt.add_mutually_exclusive_group(required=True)
    when.add_argument("--lifetime", type=int, metavar="SECONDS")
    when.add_argument("--expires", type=_parse_expires, metavar="YYYY-mm-ddTHH:MM:SSZ")
    xt.add_argument("--identifier")
    xt.add_argument("--max-lifetime", type=int, default=DEFAULT_MAX_LIFETIME, metavar="SECONDS")
    xt.set_defaults(func=_mint_xcache_token)

    dt_ = mint.add_parser("dask-tls", help="a session CA (key discarded) and scheduler/client/worker certificates")
    dt_.add_argument("--hostname", required=True, type=_nonempty)
    dt_.add_argument("--out", required=True, metavar="DIR")
    dt_.add_argument("--lifetime", type=int, default=7 * 86400, metavar="SECONDS")
    dt_.set_defaults(func=_mint_dask_tls)

    nm = sub.add_parser("names", help="slug and scheduler address for a username")
    nm.add_argument("username", type=_nonempty)
    nm.add_argument("--domain", default="localhost")
    nm.add_argument("--port", type=int, default=8786)
    nm.set_defaults(func=_names)

    check_config.register(sub)

    for ep in entry_points(group="casa.commands"):
        try:
            register = ep.load()
        except ImportError as e:  # an optional part (e.g. kubespawner) is not installed
            logging.getLogger("casa").debug("command %s unavailable: %s", ep.name, e)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CasaError as e:
        print(f"casa: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"casa: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
