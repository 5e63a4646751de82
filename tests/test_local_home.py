"""``CasaLocalSpawner.home_skeleton``: example notebooks copied into a home, never over the user's own files."""

from __future__ import annotations

import json

import pytest

import casa_session
from casa_hub.errors import ConfigurationError
from casa_spawner.local.spawner import _copy_missing


def test_the_shipped_example_notebook_is_valid_and_is_copied(tmp_path):
    home = tmp_path / "home"
    _copy_missing(casa_session.EXAMPLES_DIR, str(home))
    nb = json.loads((home / "columnar-example.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    # a coffea analysis on the session's workers, drawn inline
    assert "XCache()" in code and "CasaCluster()" in code and "processor.Runner(" in code and "NanoAODSchema" in code
    assert "%matplotlib inline" in code and "Agg" not in code


def test_a_users_own_edits_are_kept(tmp_path):
    skeleton, home = tmp_path / "skel", tmp_path / "home"
    (skeleton / "sub").mkdir(parents=True)
    (skeleton / "a.ipynb").write_text("new")
    (skeleton / "sub" / "b.txt").write_text("b")
    home.mkdir()
    (home / "a.ipynb").write_text("mine")
    _copy_missing(str(skeleton), str(home))
    assert (home / "a.ipynb").read_text() == "mine" and (home / "sub" / "b.txt").read_text() == "b"


def test_a_skeleton_that_is_not_a_directory_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="home_skeleton"):
        _copy_missing(str(tmp_path / "missing"), str(tmp_path / "home"))
