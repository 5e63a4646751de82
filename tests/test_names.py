"""User slugs: always valid, never shared, stable, readable (casa_hub.names)."""

import json
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casa_hub.errors import ConfigurationError
from casa_hub.names import is_dns_label, user_names, user_slug, validate_domain
from tests.casa_cli import run_casa

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def assert_valid_label(slug):
    assert DNS_1123_LABEL.match(slug), slug
    assert len(slug) <= 63
    assert slug[0].isalpha()  # also a valid RFC 1035 label (Service names)


@settings(max_examples=2000, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_every_unicode_username_gives_a_valid_stable_slug(username):
    slug = user_slug(username)
    assert_valid_label(slug)
    assert user_slug(username) == slug


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=80), min_size=2, max_size=40, unique=True))
def test_different_usernames_never_share_a_slug(usernames):
    slugs = [user_slug(u) for u in usernames]
    assert len(set(slugs)) == len(usernames)


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_case_and_punctuation_variants_do_not_collide(username):
    variants = {username, username.upper(), username.lower(), username + ".", username.replace("-", "_")}
    assert len({user_slug(v) for v in variants}) == len(variants)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.text(min_size=1, max_size=120),
    st.text(alphabet="abcxyz019-_.@ ", min_size=1, max_size=70),  # near-labels: dashes, lengths around 40
    st.from_regex(r"[a-z][a-z0-9-]{0,45}[a-z0-9]\n?", fullmatch=True),
))
def test_slugs_are_kubespawners_own(username):
    """KubeSpawner names the user's pod with the same scheme: both give the same slug (upstream pinned)."""
    from kubespawner.slugs import safe_slug

    assert user_slug(username) == safe_slug(username, max_length=40)


def test_casa_hub_never_imports_kubespawner():
    code = "import sys, casa_hub.names, casa_hub.facility; casa_hub.names.user_slug('Alice'); print('kubespawner' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


TRICKY = [
    # username, expected slug (None: hashed form checked by pattern)
    ("alice", "alice"),
    ("bob-smith", "bob-smith"),
    ("a1", "a1"),
    ("Alice", None),
    ("alice@cern.ch", None),
    ("alice.smith", None),
    ("alice_smith", None),
    ("alice-", None),
    ("-alice", None),
    ("9lives", None),
    ("x--y", None),
    ("a---12345678", None),  # looks like a hashed slug: must be hashed itself
    ("jürgen", None),
    ("名前", None),
    ("a" * 63, None),  # a valid label, but longer than our slug budget
    ("a" * 200, None),
    ("CN=Carl Lundstedt,CN=514102,CN=clundst,OU=Users", None),
    ("http://cilogon.org/serverA/users/12345", None),
]


@pytest.mark.parametrize("username,expected", TRICKY)
def test_tricky_usernames(username, expected):
    from kubespawner.slugs import safe_slug

    slug = user_slug(username)
    assert_valid_label(slug)
    assert slug == safe_slug(username, max_length=40)
    if expected is not None:
        assert slug == expected
    else:
        assert re.search(r"---[0-9a-f]{8}$", slug), slug


def test_tricky_table_has_no_collisions():
    lowered_pairs = [("Alice", "alice"), ("alice.smith", "alice-smith"), ("alice_smith", "alice-smith"), ("a" * 200, "a" * 201)]
    for a, b in lowered_pairs:
        assert user_slug(a) != user_slug(b)
    slugs = [user_slug(u) for u, _ in TRICKY]
    assert len(set(slugs)) == len(slugs)


def test_hashed_slugs_keep_a_readable_prefix():
    assert user_slug("alice@cern.ch").startswith("alice-cern-ch---")


@pytest.mark.parametrize("bad", ["", None, 42])
def test_empty_or_non_string_username_is_refused(bad):
    with pytest.raises(ValueError):
        user_slug(bad)


def test_scheduler_names():
    names = user_names("alice", "coffea.casa")
    assert names.slug == "alice"
    assert names.scheduler_host == "alice.dask.coffea.casa"
    assert names.scheduler_address == "tls://alice.dask.coffea.casa:8786"
    assert user_names("bob", "AF.Example.org.", 9000).scheduler_address == "tls://bob.dask.af.example.org:9000"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=100))
def test_scheduler_host_is_a_valid_dns_name(username):
    host = user_names(username, "coffea.casa").scheduler_host
    assert len(host) <= 253
    assert all(is_dns_label(label) for label in host.split("."))


@pytest.mark.parametrize(
    "domain,fragment",
    [
        ("", "empty"),
        ("under_score.org", "under_score"),
        ("-bad.org", "-bad"),
        ("a..b", "''"),
        ("x" * 64 + ".org", "not a DNS label"),
        (("abcdefgh." * 25) + "org", "too long"),
        ("tls://host", "not a DNS label"),
    ],
)
def test_invalid_domain_is_a_clear_configuration_error(domain, fragment):
    with pytest.raises(ConfigurationError) as info:
        validate_domain(domain)
    assert fragment in str(info.value)


def test_invalid_port_is_refused():
    with pytest.raises(ConfigurationError):
        user_names("alice", "coffea.casa", 70000)


def test_cli_names_prints_json():
    result = run_casa("names", "Alice@CERN.ch", "--domain", "coffea.casa")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["slug"] == user_slug("Alice@CERN.ch")
    assert data["scheduler_host"] == f"{data['slug']}.dask.coffea.casa"
    assert data["scheduler_address"] == f"tls://{data['slug']}.dask.coffea.casa:8786"


@pytest.mark.parametrize("args", [["names", ""], ["names", "alice", "--domain", "bad_domain"]])
def test_cli_names_bad_input_is_one_clear_line(args):
    result = run_casa(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr


def test_casa_hub_stays_free_of_kubernetes_and_jupyterhub():
    """DESIGN.md: casa_hub imports no Kubernetes client and no JupyterHub code -- names.py loads
    kubespawner's slugs.py by file so that kubespawner/__init__ (both of them) never runs."""
    code = (
        "import sys, pkgutil, importlib, casa_hub\n"
        "for m in pkgutil.iter_modules(casa_hub.__path__): importlib.import_module('casa_hub.' + m.name)\n"
        "assert casa_hub.names.user_slug('Alice') != 'Alice'\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'kubernetes_asyncio', 'kubespawner', 'jupyterhub', 'oauthenticator', 'casa_spawner'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
