"""Kept for notebooks written as ``from casa_spawner.cluster import CasaCluster``: the code is ``casa_session.cluster``."""

from casa_session.cluster import *  # noqa: F401,F403
from casa_session.cluster import __all__  # noqa: F401
