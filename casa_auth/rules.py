"""Defaults both casa authenticators share, so their group rules behave the same."""

from __future__ import annotations

from traitlets import default, validate
from traitlets.config import LoggingConfigurable

from casa_hub.logs import attach_to_running_application

from .groups import normalise_groups


class CasaGroupRules(LoggingConfigurable):
    """``allowed_groups``/``admin_groups`` work without the operator knowing about
    ``manage_groups``, written with or without IAM's leading ``/``; auth_state is on,
    because spawners need the access token (``JUPYTERHUB_CRYPT_KEY`` or ``c.CryptKeeper.keys``);
    casa's loggers write into the hub's log."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        attach_to_running_application()

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("enable_auth_state")
    def _default_enable_auth_state(self):
        return True

    @validate("allowed_groups", "admin_groups")
    def _normalise_configured_groups(self, proposal):
        return set(normalise_groups(proposal["value"]))
