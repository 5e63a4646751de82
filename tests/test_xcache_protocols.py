"""Reading through the demo's real XCache by ``root://`` (ztn) and HTTPS, from the notebook side.

A real origin behind a real XCache (XRootD 5.5, ``libXrdMacaroons``), the hub's macaroons, PyPI's
XRootD client and fsspec-xrootd for ``root://``, fsspec/aiohttp for HTTPS.  Fault cases run in a
fresh Python each (:func:`tests.xcache_site.probe`): XRootD's client keeps its TLS context and
connections per process, as a notebook's or a worker's would.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import time

import awkward as ak
import pytest
import uproot

from jupyterhub.utils import random_port

from casa_session.xcache import WORKER_VARIABLES, XCache, XCacheError
from casa_session.xcache_http import fsspec_options
from casa_spawner.demo.events import EVENTS_NAME, write_events
from casa_spawner.demo.server_tls import make_server_tls
from casa_spawner.demo.xcache import ensure_macaroon_secret
from tests.xcache_site import XCacheSite, probe

pytestmark = pytest.mark.timeout(240)

EVENTS = f"/store/user/alice/{EVENTS_NAME}"
NOTES = "/store/user/alice/notes.txt"
COLUMNS = ["Muon_pt", "Muon_charge"]
PROTOCOLS = ("root", "https")


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    return write_events(tmp_path_factory.mktemp("events") / EVENTS_NAME, n_events=3000, seed=11)


@pytest.fixture
async def site(tmp_path, events_file):
    s = await XCacheSite.start(tmp_path, files={EVENTS: events_file, NOTES: b"alice's notes\n", "/store/data/open.txt": b"open\n"})
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def session_env(monkeypatch):
    """Set a session's worker variables in this process (restored after the test)."""

    def apply(env: dict[str, str]) -> None:
        for name in (*WORKER_VARIABLES, "X509_CERT_DIR"):  # X509_CERT_DIR: what casa_session.xcache_root derives
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return apply


def test_worker_variables_are_the_contract():
    assert WORKER_VARIABLES == ("XCACHE_HOST", "XCACHE_HTTPS_HOST", "XCACHE_CA_FILE", "BEARER_TOKEN_FILE")


@pytest.mark.parametrize("host, https_host, root_base, https_base", [
    ("root://red-xcache1.unl.edu:1094", "", "root://red-xcache1.unl.edu:1094", "https://red-xcache1.unl.edu:1094"),
    ("root://red-xcache1.unl.edu:1094", "https://red-xcache1.unl.edu:8443", "root://red-xcache1.unl.edu:1094",
     "https://red-xcache1.unl.edu:8443"),
    ("https://xcache.example.org:8443/", "", "root://xcache.example.org:8443", "https://xcache.example.org:8443"),
])
def test_urls_for_either_protocol(host, https_host, root_base, https_base):
    x = XCache(host=host, https_host=https_host, token_file="/t")
    assert x.url("/store/a.root", "root") == root_base + "//store/a.root"
    assert x.url("/store/a.root", "https") == https_base + "/store/a.root"
    assert x.url("/store/a.root") == (root_base if host.startswith("root") else https_base) + ("//" if host.startswith("root") else "/") + "store/a.root"
    assert x.path_of(x.url("/store/a.root", "root")) == ("root", "/store/a.root")
    with pytest.raises(XCacheError, match="not this session's XCache"):
        x.path_of("root://elsewhere.org:1094//store/a.root")


@pytest.mark.parametrize("host, message", [
    ("", "XCACHE_HOST is not set"),
    ("http://xcache.example.org:8000", "expected root://host:port or https://host:port"),
    ("xcache.example.org:1094", "expected root://"),
    ("root://xcache.example.org:1094/store", "expected root://"),
])
def test_addresses_that_cannot_carry_the_token_are_refused(monkeypatch, host, message):
    monkeypatch.setenv("XCACHE_HOST", host)
    with pytest.raises(XCacheError, match=message):
        XCache()


def test_uproot_options_pickle_and_hold_no_token_or_context(monkeypatch, tmp_path):
    token = tmp_path / "t"
    token.write_text("secret-token-text\n")
    os.chmod(token, 0o600)
    monkeypatch.setenv("XCACHE_HOST", "root://c.example.org:1094")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token))
    for protocol in PROTOCOLS:
        options = XCache().uproot_options(protocol)
        assert options["xcache"] == {}  # nothing set explicitly: the worker's own environment decides
        blob = pickle.dumps(options)
        assert b"secret-token-text" not in blob and pickle.loads(blob)["handler"] is options["handler"]
    explicit = XCache(ca_file="/etc/ca.pem", timeout=20).uproot_options()
    assert explicit["xcache"] == {"ca_file": "/etc/ca.pem", "timeout": 20}
    assert "secret-token-text" not in repr(XCache()) and XCache().headers() == {"Authorization": "Bearer secret-token-text"}


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_both_protocols_read_what_the_file_holds(site, events_file, session_env, tmp_path, protocol):
    session_env(site.env(site.token_file("alice"), protocol))
    xc = XCache()
    assert xc.protocol == protocol
    direct = uproot.open(events_file)["Events"].arrays(COLUMNS)

    def read():
        with xc.open_root(EVENTS) as fh:
            return fh["Events"].arrays(COLUMNS)

    assert ak.to_list(await asyncio.to_thread(read)) == ak.to_list(direct)
    assert await asyncio.to_thread(xc.read, NOTES) == b"alice's notes\n"
    assert await asyncio.to_thread(xc.stat, EVENTS) == events_file.stat().st_size
    other = "https" if protocol == "root" else "root"  # the same cache by the other protocol, same token
    assert await asyncio.to_thread(xc.read, NOTES, other) == b"alice's notes\n"


@pytest.mark.e2e
async def test_each_fault_names_its_cause_on_either_protocol(site, tmp_path):
    alice = site.token_file("alice")
    expired = site.token_file("alice", "expired-token", lifetime=1)
    bob = site.token_file("bob")
    forged = site.token_file("alice", "forged-token", secret=ensure_macaroon_secret(tmp_path / "another-secret"))
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    loose = tmp_path / "loose-token"
    loose.write_bytes(open(alice, "rb").read())
    os.chmod(loose, 0o644)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(make_server_tls().ca_pem)
    time.sleep(1.5)  # the 1 s token is past its before:
    closed_port = random_port()
    cases = [  # (what, env changes, path, the message's cause)
        ("no token", {"BEARER_TOKEN_FILE": ""}, NOTES, "no token: BEARER_TOKEN_FILE is not set"),
        ("missing token file", {"BEARER_TOKEN_FILE": str(tmp_path / "none")}, NOTES, "does not exist"),
        ("empty token file", {"BEARER_TOKEN_FILE": str(empty)}, NOTES, "is empty"),
        ("token file others read", {"BEARER_TOKEN_FILE": str(loose)}, NOTES, "readable by others"),
        ("expired token", {"BEARER_TOKEN_FILE": expired}, NOTES, "expired at"),
        ("another user's token", {"BEARER_TOKEN_FILE": bob}, NOTES, "the token is bob's and covers /store/user/bob/, not /store/user/alice/notes.txt"),
        ("a path the token does not cover", {}, "/store/user/bob/notes.txt", "the token is alice's and covers /store/user/alice/"),
        ("a token from another key", {"BEARER_TOKEN_FILE": forged}, NOTES, "did not accept the token"),
        ("no such file", {}, "/store/user/alice/none.root", "no such file on the XCache: /store/user/alice/none.root"),
        ("CA file missing", {"XCACHE_CA_FILE": str(tmp_path / "no-ca.pem")}, NOTES, "CA file .* does not exist"),
        ("CA not given", {"XCACHE_CA_FILE": ""}, NOTES, "could not verify the XCache .*XCACHE_CA_FILE is not set"),
        ("another CA", {"XCACHE_CA_FILE": str(other_ca)}, NOTES, "could not verify the XCache"),
        ("cache down", {"XCACHE_HOST": f"{{scheme}}://localhost:{closed_port}"}, NOTES, "cannot reach the XCache at"),
    ]
    tokens = [open(p).read().strip() for p in (alice, expired, bob, forged)]
    for protocol in PROTOCOLS:
        for what, change, path, cause in cases:
            env = {**site.env(alice, protocol), **{k: v.format(scheme="root" if protocol == "root" else "https") for k, v in change.items()}}
            start = time.monotonic()
            out = await asyncio.to_thread(probe, {k: v for k, v in env.items() if v}, path, protocol)
            assert out.startswith("XCacheError: "), (protocol, what, out)
            assert re.search(cause, out), (protocol, what, out)
            assert time.monotonic() - start < 30, (protocol, what, "took too long")
            assert not any(t in out for t in tokens)
    for protocol in PROTOCOLS:  # the public area: a token for another path logs in, and authdb lets anyone read there
        assert await asyncio.to_thread(probe, site.env(alice, protocol), "/store/data/open.txt", protocol) == "OK 5"
    logs = site.logs()
    for token in tokens:  # no token in either server's log, raw or URL-encoded (the encoded form starts the same)
        assert token[:40] not in logs


@pytest.mark.e2e
async def test_with_the_origin_down_a_cached_file_is_still_served(site, events_file, session_env):
    session_env(site.env(site.token_file("alice")))
    xc = XCache(timeout=25)  # the cache itself gives up on its origin after about 20 s (XRootD 5.5's pss)
    cached = site.server.cache_root / EVENTS.lstrip("/")
    await asyncio.to_thread(lambda: xc.open_root(EVENTS)["Events"].arrays(COLUMNS))
    await asyncio.to_thread(xc.read, EVENTS)  # the whole file, so every block is in the cache
    assert cached.is_file()
    await site.server.origin.stop()
    for protocol in PROTOCOLS:
        assert await asyncio.to_thread(xc.read, EVENTS, protocol) == events_file.read_bytes()
        start = time.monotonic()
        with pytest.raises(XCacheError, match="could not get /store/user/alice/notes.txt from its origin|did not answer") as err:
            await asyncio.to_thread(xc.read, NOTES, protocol)  # never read: nothing cached
        assert time.monotonic() - start < 30, err.value


@pytest.mark.e2e
async def test_a_renewed_token_is_used_by_the_next_open(site, session_env, tmp_path):
    """What XRootD's ztn does with a token read at login, measured, and what XCache does about it."""
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    token_file = site.token_file("alice", "session-token", lifetime=6)
    session_env(site.env(token_file))
    xc = XCache(timeout=20)
    assert await asyncio.to_thread(xc.read, NOTES) == b"alice's notes\n"
    plain = xc.url(NOTES)  # one connection for every open, as a bare client would use it
    held = client.File()
    assert (await asyncio.to_thread(held.open, plain, OpenFlags.READ, 0, 20))[0].ok
    site.token_file("alice", "session-token", lifetime=3600)  # renewed in place, as the hub does
    await asyncio.sleep(7)  # the first token has expired
    status, data = await asyncio.to_thread(held.read, 0, 5, 20)
    assert status.ok and data == b"alice"  # a file opened before the expiry keeps reading
    again = client.File()
    status, _ = await asyncio.to_thread(again.open, plain, OpenFlags.READ, 0, 20)
    assert not status.ok and status.errno == 3010  # the old connection's token: refused, despite the new file
    assert await asyncio.to_thread(xc.read, NOTES) == b"alice's notes\n"  # a connection per token: the new one
    with xc.open_root(EVENTS) as fh:
        assert fh["Events"].num_entries == 3000
    held.close()


@pytest.mark.e2e
async def test_https_reads_take_the_token_at_each_request(site, session_env, events_file):
    import fsspec

    token_file = site.token_file("alice", "session-token", lifetime=6)
    session_env(site.env(token_file, "https"))
    xc = XCache(timeout=20)
    fs, _ = fsspec.core.url_to_fs(xc.url(EVENTS), **fsspec_options(xc))
    assert fs.cat_file(xc.url(NOTES)) == b"alice's notes\n"
    site.token_file("alice", "session-token", lifetime=3600)
    await asyncio.sleep(7)
    again, _ = fsspec.core.url_to_fs(xc.url(EVENTS), **fsspec_options(xc))
    assert again is fs  # the same filesystem and aiohttp session ...
    assert fs.cat_file(xc.url(NOTES)) == b"alice's notes\n"  # ... with the renewed token


@pytest.mark.e2e
async def test_the_cache_fetches_as_itself_and_the_origin_still_checks_everyone_else(site):
    alice, bob = site.token_file("alice"), site.token_file("bob")
    assert await asyncio.to_thread(probe, site.env(alice, "root"), NOTES, "root") == "OK 14"  # a miss: fetched from the origin
    log = site.server.origin.log_path.read_text()
    assert "login as xcache" in log  # the cache's own sss identity, not alice's token
    assert re.search(r"FD \d+#1 bound u\d+", log)  # a data stream beside the TLS one: file data in clear on loopback
    origin = {"XCACHE_CA_FILE": str(site.server.ca_file)}
    for protocol, host in (("root", site.server.origin_root_url), ("https", site.server.origin_url)):
        assert await asyncio.to_thread(probe, {**origin, "XCACHE_HOST": host, "BEARER_TOKEN_FILE": alice}, NOTES, protocol) == "OK 14"
        refused = await asyncio.to_thread(probe, {**origin, "XCACHE_HOST": host, "BEARER_TOKEN_FILE": bob}, NOTES, protocol)
        assert refused.startswith("XCacheError: the XCache refused /store/user/alice/notes.txt"), refused


AS_THE_CACHE = """
import sys
from XRootD import client
from XRootD.client.flags import OpenFlags
base, path, token = sys.argv[1:]
for url in (f"{base}/{path}?authz={token}", f"{base}/{path}"):  # an HTTPS user's request as the cache forwards it, then a root:// one
    f = client.File()
    status, _ = f.open(url, OpenFlags.READ, timeout=20)
    print(status.ok, status.errno)
    f.close()
"""


@pytest.mark.e2e
async def test_the_origin_lets_the_cache_in_after_a_forwarded_token_on_the_same_connection(site, tmp_path):
    """XRootD 5.5's macaroon check writes the token's name into the connection's identity (``request.name``),
    and authdb matches that on the connection's next requests: the origin's rule for the cache is by group."""
    import shutil
    import subprocess
    import sys

    keytab = tmp_path / "keytab"  # the cache's key, readable by this test's user
    shutil.copyfile(site.server.run_dir / "sss.keytab", keytab)
    keytab.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "XrdSecPROTOCOL": "sss", "XrdSecSSSKT": str(keytab),
           "X509_CERT_DIR": str(site.server.run_dir / "tls" / "certificates")}
    token = site.token("alice")
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", AS_THE_CACHE, site.server.origin_root_url, NOTES, token],
                                   env=env, capture_output=True, text=True, timeout=90)
    assert done.stdout.split() == ["True", "0", "True", "0"], done.stdout + done.stderr[-2000:]
