"""``casa demo``: the processes of the one-machine facility (Traefik, the XCache, the HTCondor pool, the hub) and the command."""

from .command import register

__all__ = ["register"]
