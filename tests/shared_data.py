"""Where ``shared/`` (reference data, the HTCondor build) sits: beside the checkout, or beside a
directory of checkouts (``<dir>/wt/<name>`` next to ``<dir>/shared``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The nearest ``shared/`` beside the checkout or one of its parents (``REPO.parent/shared`` if none)."""
    for parent in REPO.parents:
        candidate = parent / "shared"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared"


SHARED = shared_dir()
REFERENCE = SHARED / "reference"
