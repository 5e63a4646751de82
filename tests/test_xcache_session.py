"""``casa_session.xcache.XCache``: a notebook's reads through the real XCache with its own token.

The demo's ROOT file of events (``casa_spawner.demo.events``, written with uproot) is put in
alice's area of a real origin behind a real XCache; the helper opens it with uproot over HTTPS
with alice's macaroon, as the example notebook does, and gets the same columns as reading the
file directly.  Without a token, or with bob's, uproot's open fails with the cache's refusal.
"""

from __future__ import annotations

import datetime as dt

import awkward as ak
import pytest
import uproot

from casa_hub.files import atomic_write
from casa_session.xcache import XCache, XCacheError
from casa_spawner.demo.events import EVENTS_NAME, write_events
from casa_spawner.demo.xcache import XCacheServer, ensure_macaroon_secret

SITE = "CASA_SESSION_TEST"
EVENTS = f"/store/user/alice/{EVENTS_NAME}"


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    return write_events(tmp_path_factory.mktemp("events") / EVENTS_NAME, n_events=3000, seed=5)


@pytest.fixture
def secret_file(tmp_path):
    return ensure_macaroon_secret(tmp_path / "macaroon-secret")


@pytest.fixture
async def server(secret_file, events_file):
    srv = XCacheServer(sitename=SITE, secret_file=str(secret_file), users=["alice", "bob"], files={EVENTS: events_file}, ready_timeout=40)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def token_file(make_facility, secret_file, tmp_path, user: str) -> str:
    facility = make_facility(macaroon_secret_file=str(secret_file), xcache_site=SITE, xcache_paths=["/store/user/{username}"])
    cred = facility.xcache_token_file(user, dt.datetime.now(dt.timezone.utc))
    return str(atomic_write(tmp_path / f"{user}-token", cred.content, mode=0o600))


def test_settings_come_from_the_session_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XCACHE_HOST", "https://xcache.example.org:1094/")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "t"))
    monkeypatch.setenv("XCACHE_CA_FILE", "/etc/ca.pem")
    x = XCache()
    assert x.url("/store/a.root") == "https://xcache.example.org:1094/store/a.root"
    assert (x.token_file, x.ca_file) == (str(tmp_path / "t"), "/etc/ca.pem")
    (tmp_path / "t").write_text("secret-token\n")
    assert x.headers() == {"Authorization": "Bearer secret-token"}
    assert "secret-token" not in repr(x)


@pytest.mark.parametrize("host, message", [
    ("", "XCACHE_HOST is not set"),
    ("root://xcache.example.org:1094", "only https://"),
    ("http://xcache.example.org:8000", "only https://"),
])
def test_addresses_that_cannot_carry_the_token_are_refused(monkeypatch, host, message):
    monkeypatch.setenv("XCACHE_HOST", host)
    with pytest.raises(XCacheError, match=message):
        XCache()


def test_relative_paths_and_missing_token_files_say_so(tmp_path):
    x = XCache(host="https://c:1", token_file=str(tmp_path / "none"))
    with pytest.raises(XCacheError, match="absolute"):
        x.url("store/a.root")
    with pytest.raises(XCacheError, match="cannot read the token file"):
        x.token()


@pytest.mark.e2e
async def test_uproot_reads_alices_events_through_the_cache_with_her_token(server, events_file, make_facility, secret_file, tmp_path):
    import asyncio

    alice = XCache(host=server.url, token_file=token_file(make_facility, secret_file, tmp_path, "alice"), ca_file=str(server.ca_file))
    direct = uproot.open(events_file)["Events"].arrays(["Muon_pt", "Muon_charge"])

    def read():
        with alice.open_root(EVENTS) as fh:
            return fh["Events"].arrays(["Muon_pt", "Muon_charge"])

    through_cache = await asyncio.to_thread(read)
    assert ak.to_list(through_cache) == ak.to_list(direct)
    cached = server.cache_root / EVENTS.lstrip("/")
    assert cached.is_file()  # the cache kept what uproot read
    await server.origin.stop()
    again = await asyncio.to_thread(read)  # the origin is gone: served by the cache
    assert ak.to_list(again) == ak.to_list(direct)

    bob = XCache(host=server.url, token_file=token_file(make_facility, secret_file, tmp_path, "bob"), ca_file=str(server.ca_file))
    (tmp_path / "empty").write_text("\n")
    nobody = XCache(host=server.url, token_file=str(tmp_path / "empty"), ca_file=str(server.ca_file))
    for other in (bob, nobody):
        with pytest.raises(Exception, match="403|Forbidden"):
            await asyncio.to_thread(lambda: other.open_root(EVENTS)["Events"].num_entries)
        with pytest.raises(XCacheError, match="HTTP 403"):
            await asyncio.to_thread(other.read, EVENTS)
