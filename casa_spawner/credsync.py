"""Kept for pod specs of running sessions that name ``python -m casa_spawner.credsync``: the code is ``casa_session.credsync``."""

import sys

from casa_session.credsync import *  # noqa: F401,F403
from casa_session.credsync import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
