"""``casa demo``: the processes of the one-machine facility (Traefik, the XCache stand-in, the hub) and the command."""

from .command import register

__all__ = ["register"]
