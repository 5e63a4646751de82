"""Where the tests find what lives beside the checkout: ``shared/`` (the HTCondor build, reference data)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> Path:
    """``$CASA_TEST_SHARED``, else the first ``shared/`` beside the checkout or beside one of its parents
    (a git worktree sits a level deeper than the main checkout); ``../shared`` if there is none."""
    if os.environ.get("CASA_TEST_SHARED"):
        return Path(os.environ["CASA_TEST_SHARED"])
    for parent in REPO.parents:
        if (parent / "shared").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


SHARED = find_shared()
REFERENCE = SHARED / "reference"
