"""casa's loggers (``casa``, ``casa.audit``, ``casa.traefik`` ...) in the log of the application that
runs them -- JupyterHub's, with its handlers and format -- the way JupyterHub hooks up tornado's.

Without this a running hub prints none of them: ``casa`` propagates to the root logger, which has no
handler there.  Called when a casa class is built; a no-op outside a traitlets ``Application``
(the ``casa`` command configures logging itself) and once attached.
"""

from __future__ import annotations

import logging

CASA_LOGGER = "casa"
AUDIT_LOGGER = "casa.audit"


def attach_to(app_log: logging.Logger | logging.LoggerAdapter) -> None:
    """Make ``casa`` a child of ``app_log`` at its level; audit lines stay on (INFO) when it logs less."""
    parent = getattr(app_log, "logger", app_log)  # a LoggerAdapter's logger
    casa = logging.getLogger(CASA_LOGGER)
    if casa.parent is parent:
        return
    casa.parent = parent
    casa.propagate = True
    casa.setLevel(parent.getEffectiveLevel())
    # every issued credential leaves a line, even in a hub that logs only warnings
    logging.getLogger(AUDIT_LOGGER).setLevel(min(logging.INFO, parent.getEffectiveLevel()))


def attach_to_running_application() -> None:
    """:func:`attach_to` the log of the traitlets Application this process runs (the hub), if any."""
    from traitlets.config import Application

    if Application.initialized():
        attach_to(Application.instance().log)
