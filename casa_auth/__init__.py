"""casa_auth: who is this person, may they in, are they admin.

- ``CasaOAuthenticator`` (entry point ``casa``): OIDC login with group rules;
- ``CasaDummyAuthenticator`` (entry point ``casa-dummy``): fixed users for tests and demos;
- ``TEMPLATE_DIR``: the login and 403 pages, for ``c.JupyterHub.template_paths``.
"""

from .dummy import CasaDummyAuthenticator
from .oauth import CasaOAuthenticator
from .pages import TEMPLATE_DIR, LoginProblem, LoginRefused
from .state import CASA_KEY, access_token_expiry

__all__ = [
    "CASA_KEY",
    "TEMPLATE_DIR",
    "CasaDummyAuthenticator",
    "CasaOAuthenticator",
    "LoginProblem",
    "LoginRefused",
    "access_token_expiry",
]
