"""Tokens from ``casa_hub.macaroon.make_macaroon`` against a real XRootD 5.5 server.

One server (HTTP + libXrdMacaroons, ``macaroons.maxduration 3600``) serves the module; every
test asserts the HTTP status a user sees with ``Authorization: Bearer <token>``.  Where
XRootD's behaviour differs from what one might expect (``path:`` is a string prefix, several
``path:`` caveats are ANDed, ``name:`` is not checked, the location is compared only up to the
token's length, a token without ``before:`` never expires), the test asserts what the server
really does, so an XRootD upgrade that changes it shows up here.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import re
import urllib.parse

import pytest
from pymacaroons import Macaroon

from casa_hub.errors import CredentialError
from casa_hub.macaroon import BEFORE_FORMAT, decode_secret, make_macaroon
from tests.xrootd_server import XRootDStartError, start_xrootd

pytestmark = pytest.mark.e2e  # one real XRootD serves the module

SITE = "CASA_TEST"
MAXDURATION = 3600
READ = "READ_METADATA,DOWNLOAD,LIST"
REFUSED = (401, 403)

FILES = {
    "store/user/alice/f.txt": b"alice's data\n",
    "store/user/alice2/y.txt": b"alice2's data\n",
    "store/user/bob/x": b"bob's data\n",
    "store/group/g.txt": b"group data\n",
}


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "macaroon-secret"
    path.write_bytes(base64.b64encode(os.urandom(48)) + b"\n")  # trailing newline: OpenSSL needs it
    return path


@pytest.fixture(scope="module")
def secret(secret_file):
    return decode_secret(secret_file.read_bytes())


@pytest.fixture(scope="module")
def server(tmp_path_factory, secret_file):
    data = tmp_path_factory.mktemp("data")
    for rel, content in FILES.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
    with start_xrootd(
        tmp_path_factory.mktemp("xrootd"),
        sitename=SITE,
        secret_b64_file=secret_file,
        data_dir=data,
        maxduration=MAXDURATION,
        extra_config=["macaroons.trace all"],  # caveats (never the token) in the log
        timeout=20,
    ) as srv:
        yield srv


def fetch(server, path, token=None, method="GET"):
    """(status, body) of one request, as a user's HTTP client sees it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Connection": "close"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, urllib.parse.quote(path), body=b"x" if method == "PUT" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def mint(secret, paths="/store", *, name="alice", location=SITE, activities=READ, **kw):
    if "expires" not in kw:
        kw.setdefault("lifetime", 600)
    return make_macaroon(secret, location=location, name=name, activities=activities, paths=paths, **kw).token


def raw_macaroon(secret, *caveats, location=SITE):
    """A macaroon with exactly these caveats, for shapes make_macaroon will not produce."""
    mac = Macaroon(location=location, identifier="raw-test-token", key=secret)
    for caveat in caveats:
        mac.add_first_party_caveat(caveat)
    return mac.serialize()


def before_in(seconds):
    return "before:" + (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).strftime(BEFORE_FORMAT)


# --- the normal case ---------------------------------------------------------------------


def test_store_token_reads_a_file(server, secret):
    status, body = fetch(server, "/store/user/alice/f.txt", mint(secret, "/store"))
    assert status == 200
    assert body == FILES["store/user/alice/f.txt"]


def test_user_token_reads_and_lists_own_directory(server, secret):
    tok = mint(secret, "/store/user/alice")
    assert fetch(server, "/store/user/alice/f.txt", tok) == (200, FILES["store/user/alice/f.txt"])
    status, body = fetch(server, "/store/user/alice/", tok)
    assert status == 200 and b"f.txt" in body
    assert fetch(server, "/store/user/alice/f.txt", tok, method="HEAD")[0] == 200
    # metadata of the directory itself is fine without the slash ...
    assert fetch(server, "/store/user/alice", tok, method="HEAD")[0] == 200
    # ... but a listing must be asked for as ".../alice/" (the caveat is "path:/store/user/alice/")
    assert fetch(server, "/store/user/alice", tok)[0] in REFUSED


def test_no_token_is_refused(server):
    status, body = fetch(server, "/store/user/alice/f.txt")
    assert status in REFUSED
    assert FILES["store/user/alice/f.txt"] not in body


def test_garbage_token_is_refused(server):
    assert fetch(server, "/store/user/alice/f.txt", "not-a-macaroon")[0] in REFUSED


# --- path caveats --------------------------------------------------------------------------


def test_path_outside_prefix_is_refused(server, secret):
    tok = mint(secret, "/store/user/alice")
    status, body = fetch(server, "/store/user/bob/x", tok)
    assert status in REFUSED
    assert FILES["store/user/bob/x"] not in body
    assert fetch(server, "/store/group/g.txt", tok)[0] in REFUSED


def test_dotdot_escape_is_refused(server, secret):
    tok = mint(secret, "/store/user/alice")
    assert fetch(server, "/store/user/alice/../bob/x", tok)[0] in REFUSED


def test_path_prefix_is_directory_wise(server, secret):
    """make_macaroon writes ``path:<prefix>/``: /store/user/al does not open /store/user/alice."""
    assert fetch(server, "/store/user/alice/f.txt", mint(secret, "/store/user/al"))[0] in REFUSED
    tok = make_macaroon(secret, location=SITE, name="alice", activities=READ, paths="/store/user/alice",
                        lifetime=600).token
    assert "path:/store/user/alice/\n" in Macaroon.deserialize(tok).inspect() + "\n"
    assert fetch(server, "/store/user/alice2/y.txt", tok)[0] in REFUSED
    assert fetch(server, "/store/user/alice/f.txt", tok) == (200, FILES["store/user/alice/f.txt"])
    # a trailing slash given by the caller is kept, not doubled
    assert fetch(server, "/store/user/alice2/y.txt", mint(secret, "/store/user/alice/"))[0] in REFUSED


def test_xrootd_itself_matches_path_as_a_string_prefix(server, secret):
    """Why the slash: XRootD 5.5 strncmp()s ``path:`` against the request, so a caveat without
    the trailing slash (as another issuer might write it) is a plain string prefix."""
    tok = raw_macaroon(secret, "name:alice", f"activity:{READ}", "path:/store/user/al", before_in(600))
    assert fetch(server, "/store/user/alice/f.txt", tok) == (200, FILES["store/user/alice/f.txt"])
    tok = raw_macaroon(secret, "name:alice", f"activity:{READ}", "path:/store/user/alice", before_in(600))
    assert fetch(server, "/store/user/alice2/y.txt", tok) == (200, FILES["store/user/alice2/y.txt"])


def test_several_path_caveats_must_all_match(server, secret):
    """libmacaroons checks every caveat on its own: two disjoint ``path:`` caveats grant nothing,
    so make_macaroon takes exactly one prefix."""
    tok = raw_macaroon(secret, "name:alice", f"activity:{READ}", "path:/store/user/alice/",
                       "path:/store/user/bob/", before_in(600))
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] in REFUSED
    assert fetch(server, "/store/user/bob/x", tok)[0] in REFUSED
    with pytest.raises(CredentialError, match="exactly one"):
        make_macaroon(secret, location=SITE, name="alice", activities=READ,
                      paths=["/store/user/alice", "/store/user/bob"], lifetime=600)
    # a list with one prefix (however spelt) is still fine
    tok = mint(secret, ["/store/user/bob", "/store/user/bob/"])
    assert fetch(server, "/store/user/bob/x", tok) == (200, FILES["store/user/bob/x"])


# --- activities ----------------------------------------------------------------------------


def test_read_token_cannot_write(server, secret):
    assert fetch(server, "/store/user/alice/new.txt", mint(secret, "/store/user/alice"), method="PUT")[0] in REFUSED
    assert not (server.export_root / "store/user/alice/new.txt").exists()


def test_token_without_download_cannot_read(server, secret):
    tok = mint(secret, "/store/user/alice", activities="READ_METADATA,LIST")
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] in REFUSED


# --- time --------------------------------------------------------------------------------


def test_expired_token_is_refused(server, secret):
    now = dt.datetime.now(dt.timezone.utc)
    tok = mint(secret, "/store", now=now - dt.timedelta(minutes=10), expires=now - dt.timedelta(seconds=5))
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] in REFUSED


def test_lifetime_beyond_server_maxduration_is_refused(server, secret):
    # our side allowed it (max_lifetime raised to 7200) -- the server (maxduration 3600) does not
    too_long = mint(secret, "/store", lifetime=2 * MAXDURATION, max_lifetime=2 * MAXDURATION)
    assert fetch(server, "/store/user/alice/f.txt", too_long)[0] in REFUSED
    just_over = mint(secret, "/store", lifetime=MAXDURATION + 120, max_lifetime=2 * MAXDURATION)
    assert fetch(server, "/store/user/alice/f.txt", just_over)[0] in REFUSED
    within = mint(secret, "/store", lifetime=MAXDURATION - 120, max_lifetime=2 * MAXDURATION)
    assert fetch(server, "/store/user/alice/f.txt", within)[0] == 200
    assert "Max token age is greater than configured max duration" in server.log_text()


def test_make_macaroon_refuses_lifetime_beyond_max_lifetime(secret):
    with pytest.raises(CredentialError, match="maxduration=3600"):
        make_macaroon(secret, location=SITE, name="alice", activities=READ, paths="/store",
                      lifetime=2 * MAXDURATION, max_lifetime=MAXDURATION)
    with pytest.raises(CredentialError, match="maxduration=86400"):
        make_macaroon(secret, location=SITE, name="alice", activities=READ, paths="/store", lifetime=86401)


def test_token_without_before_never_expires_so_we_always_add_one(server, secret):
    """XRootD does not require ``before:``; maxduration only bounds a ``before`` that is present."""
    tok = raw_macaroon(secret, "name:alice", f"activity:{READ}", "path:/store")
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] == 200
    issued = make_macaroon(secret, location=SITE, name="alice", activities=READ, paths="/store", lifetime=60)
    assert f"before:{issued.expires_at:{BEFORE_FORMAT}}" in Macaroon.deserialize(issued.token).inspect()


# --- location and key ------------------------------------------------------------------------


def test_wrong_location_is_refused(server, secret):
    assert fetch(server, "/store/user/alice/f.txt", mint(secret, "/store", location="OTHER_SITE"))[0] in REFUSED
    assert fetch(server, "/store/user/alice/f.txt", mint(secret, "/store", location=SITE + "_2"))[0] in REFUSED
    assert "Macaroon is for incorrect location" in server.log_text()


def test_location_is_compared_only_up_to_the_tokens_length(server, secret):
    """XRootD 5.5 strncmp()s the token's location against all.sitename over the token's length,
    so a location that is a prefix of the site name passes.  Harmless -- the signature is what
    protects -- but the location is no real check."""
    assert fetch(server, "/store/user/alice/f.txt", mint(secret, "/store", location=SITE[:4]))[0] == 200


def test_token_signed_with_another_secret_is_refused(server):
    other = os.urandom(48)
    status, body = fetch(server, "/store/user/alice/f.txt", mint(other, "/store"))
    assert status in REFUSED
    assert FILES["store/user/alice/f.txt"] not in body


def test_tampered_caveat_is_refused(server, secret):
    tok = mint(secret, "/store/user/alice")
    raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
    forged = raw.replace(b"path:/store/user/alice", b"path:/store/user/bobby")
    assert forged != raw
    forged_tok = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    assert fetch(server, "/store/user/bob/x", forged_tok)[0] in REFUSED


def test_unknown_caveat_is_refused(server, secret):
    tok = raw_macaroon(secret, "name:alice", f"activity:{READ}", "path:/store", before_in(600), "ip:127.0.0.1")
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] in REFUSED


# --- the name caveat ---------------------------------------------------------------------------


def test_name_caveat_is_recorded_not_checked(server, secret):
    """``name:`` restricts nothing: any name is accepted (a token naming bob reads alice's files if
    its path allows it) and a token without one is accepted too.  XRootD only records the name
    as the request's user name (log: "Setting the request name to ..."), used for monitoring."""
    tok = mint(secret, "/store/user/alice", name="bob-the-monitored")
    assert fetch(server, "/store/user/alice/f.txt", tok) == (200, FILES["store/user/alice/f.txt"])
    assert re.search(r"Setting the request name to bob-the-monitored", server.log_text())
    no_name = raw_macaroon(secret, f"activity:{READ}", "path:/store/user/alice", before_in(600))
    assert fetch(server, "/store/user/alice/f.txt", no_name)[0] == 200


def test_server_log_never_contains_a_token(server, secret):
    tok = mint(secret, "/store/user/alice")
    assert fetch(server, "/store/user/alice/f.txt", tok)[0] == 200
    log = server.log_text()
    assert tok not in log
    assert tok[-40:] not in log  # the signature part


# --- the fixture itself ------------------------------------------------------------------------


def test_secret_file_without_trailing_newline_does_not_start(tmp_path, secret_file):
    """OpenSSL 3's base64 BIO decodes a one-line file without a newline to nothing."""
    no_newline = tmp_path / "secret-no-newline"
    no_newline.write_bytes(secret_file.read_bytes().rstrip(b"\n"))
    with pytest.raises(XRootDStartError, match="Secret key is too short"):
        start_xrootd(tmp_path, sitename=SITE, secret_b64_file=no_newline, timeout=15)
    assert "Secret key is too short" in (tmp_path / "xrootd.log").read_text()


def test_fixture_runs_an_xcache_in_front_of_an_origin(tmp_path, secret_file, secret):
    """The recipe in xrootd_server's docstring: a real XCache (XrdPss + XrdPfc) that checks
    macaroons for its own site name and caches what it reads from an open origin."""
    data = tmp_path / "origin-data"
    (data / "store/user/alice").mkdir(parents=True)
    (data / "store/user/alice/big.root").write_bytes(b"event data\n" * 1000)
    (tmp_path / "o").mkdir()
    (tmp_path / "c").mkdir()
    with start_xrootd(tmp_path / "o", sitename="ORIGIN", secret_b64_file=secret_file, data_dir=data,
                      authdb_rules="u * /store lr\n") as origin, \
         start_xrootd(tmp_path / "c", sitename="XCACHE", secret_b64_file=secret_file, extra_config=[
             "ofs.osslib libXrdPss.so", f"pss.origin 127.0.0.1:{origin.port}",
             "pss.cachelib libXrdPfc.so", "pfc.ram 1g"]) as cache:
        tok = mint(secret, "/store/user/alice", location="XCACHE")
        assert fetch(cache, "/store/user/alice/big.root", tok) == (200, b"event data\n" * 1000)
        assert (cache.export_root / "store/user/alice/big.root").exists()  # it is cached
        assert fetch(cache, "/store/user/alice/big.root")[0] in REFUSED
        assert fetch(cache, "/store/user/alice/big.root", mint(secret, "/store/user/bob", location="XCACHE"))[0] in REFUSED
        assert fetch(cache, "/store/user/alice/big.root", mint(secret, "/store/user/alice", location="ORIGIN"))[0] in REFUSED
