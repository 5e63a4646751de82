"""``casa check-config``'s checks of the authenticator: casa's class, auth_state on, and (``--online``) the IdP.

Registered in the ``casa.checks`` entry-point group (see :mod:`casa_hub.check_config`).  Online,
the issuer's discovery document is read with the authenticator's own HTTP client and checked
as a login would check it (same issuer, every endpoint a URL).
"""

from __future__ import annotations

import asyncio

from tornado.httpclient import HTTPClientError

from casa_hub.check_config import CheckReport, resolve_class
from casa_hub.errors import ConfigurationError

from .dummy import CasaDummyAuthenticator
from .oauth import CasaOAuthenticator
from .presets import DiscoveryError, discovery_url, parse_discovery


async def _check_discovery(report: CheckReport, authenticator: CasaOAuthenticator) -> None:
    issuer = authenticator.issuer
    if not issuer:
        report.problem("CasaOAuthenticator.issuer is empty: the IdP cannot be checked (nor discovered at login)")
        return
    url = discovery_url(issuer)
    try:
        document = await authenticator.httpfetch(url, label="reading the OIDC discovery document",
                                                 validate_cert=authenticator.validate_server_cert, request_timeout=15)
        endpoints = parse_discovery(document, issuer)
    except asyncio.CancelledError:
        raise
    except HTTPClientError as e:
        report.problem(f"the IdP's discovery document {url} could not be read: " + ("no answer" if e.code == 599 else f"HTTP {e.code}"))
        return
    except OSError as e:
        report.problem(f"the IdP's discovery document {url} could not be read: {e.strerror or e}")
        return
    except (DiscoveryError, ValueError) as e:
        report.problem(f"the IdP's discovery document {url} is unusable: {e}")
        return
    for trait, discovered in sorted(endpoints.items()):
        configured = getattr(authenticator, trait)
        if configured and configured != discovered:
            report.problem(f"CasaOAuthenticator.{trait} is {configured} but the IdP announces {discovered}")
    report.note(f"IdP {issuer}: discovery document read, token endpoint {endpoints.get('token_url')}")


async def check_authenticator(report: CheckReport) -> None:
    value = report.config.JupyterHub.get("authenticator_class") if "JupyterHub" in report.config else None
    if value is None:
        report.problem("JupyterHub.authenticator_class is not set (the hub would use PAMAuthenticator): use 'casa'")
        return
    try:
        cls = resolve_class(value, "jupyterhub.authenticators")
    except ConfigurationError as e:
        report.problem(f"JupyterHub.authenticator_class: {e}")
        return
    if not (isinstance(cls, type) and issubclass(cls, (CasaOAuthenticator, CasaDummyAuthenticator))):
        report.problem(f"JupyterHub.authenticator_class {value!r} is not casa's ('casa', 'casa-dummy' or a subclass): "
                       "users' groups and tokens would not reach the sessions")
        return
    try:
        authenticator = cls(config=report.config)
    except Exception as e:  # a trait the class refuses: the hub would not start either
        report.problem(f"{cls.__name__} refuses the configuration: {e}")
        return
    if issubclass(cls, CasaDummyAuthenticator):
        report.note(f"authenticator {cls.__name__}: fixed users {', '.join(sorted(authenticator.users)) or '(none)'} (a demo, not a facility)")
        return
    if not authenticator.enable_auth_state:
        report.problem("Authenticator.enable_auth_state is False: sessions get no access token and it is never refreshed")
    if not (authenticator.allowed_groups or authenticator.allow_all or authenticator.allowed_users or authenticator.admin_groups):
        report.problem("CasaOAuthenticator.allowed_groups is empty (and allow_all is off): nobody can log in")
    report.note(f"authenticator {cls.__name__}: idp {authenticator.idp}, issuer {authenticator.issuer or '(none)'}, "
                f"allowed groups {', '.join(sorted(authenticator.allowed_groups)) or '(any)'}")
    if report.online:
        await _check_discovery(report, authenticator)
