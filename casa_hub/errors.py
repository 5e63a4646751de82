"""Errors a facility operator or user can act on: each carries one clear sentence."""


class CasaError(Exception):
    """Base class: the message is shown as-is to the operator (never a traceback)."""


class ConfigurationError(CasaError, ValueError):
    """The facility configuration is invalid (bad domain, unreadable key file, ...)."""


class CredentialError(CasaError, ValueError):
    """A credential cannot be issued as asked (lifetime too long, unknown activity, ...)."""
