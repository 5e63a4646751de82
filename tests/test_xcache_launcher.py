"""``casa_spawner.demo.xcache.XCacheServer`` against the real ``xrootd`` 5.5: what a user's token reads.

A real origin behind a real XCache (``libXrdPss`` + ``libXrdPfc``) per test; every request is
made over HTTPS on loopback as a notebook's client would, verifying the server with the run's
CA, with the macaroon the hub's ``Facility`` issues.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import pwd
import socket
import stat
import urllib.error
import urllib.request

import pytest

from casa_hub.errors import CasaError
from casa_hub.facility import Facility
from casa_spawner.demo.server_tls import make_server_tls
from casa_spawner.demo.xcache import DEMO_DATA, DEMO_DATA_PATH, XCacheServer, ensure_macaroon_secret, xrootd_config

SITE = "CASA_XC_TEST"
BIG_PATH = "/store/user/alice/events.bin"
BIG = os.urandom(3 * 1024 * 1024 + 17)  # several of the cache's blocks


def get(server: XCacheServer, path: str, token: str | None = None, base: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request((base or server.url) + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=server.ssl_context()) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def token(facility: Facility, user: str) -> str:
    return facility.xcache_token_file(user, dt.datetime.now(dt.timezone.utc)).content.decode().strip()


@pytest.fixture
def secret_file(tmp_path):
    return ensure_macaroon_secret(tmp_path / "state" / "macaroon-secret")


@pytest.fixture
def xcache_facility(make_facility, secret_file):
    """A facility that signs macaroons with the XCache's own secret file (not ``master_secrets``)."""
    return make_facility(macaroon_secret_file=str(secret_file), xcache_site=SITE, xcache_paths=["/store/user/{username}"])


@pytest.fixture
async def server(secret_file):
    srv = XCacheServer(
        sitename=SITE,
        secret_file=str(secret_file),
        users=["alice", "bob"],
        public_paths=["/store/data"],
        files={DEMO_DATA_PATH: DEMO_DATA, "/store/user/alice/notes.txt": b"alice's notes\n", BIG_PATH: BIG},
        ready_timeout=40,
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def test_secret_file_is_private_base64_with_newline(secret_file):
    raw = secret_file.read_bytes()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert len(base64.b64decode(raw)) >= 32


def test_existing_secret_is_kept(secret_file):
    before = secret_file.read_bytes()
    assert ensure_macaroon_secret(secret_file) == secret_file
    assert secret_file.read_bytes() == before


def test_world_readable_secret_is_refused(secret_file):
    os.chmod(secret_file, 0o644)
    with pytest.raises(CasaError, match="chmod 600"):
        ensure_macaroon_secret(secret_file)


def test_config_has_the_directives_xrootd_needs(tmp_path):
    text = xrootd_config(port=1094, sitename=SITE, secret_path="/s", export_root="/e", admin_dir="/a", authdb_path="/d", maxduration=3600)
    lines = text.splitlines()
    for line in ("http.header2cgi Authorization authz", "ofs.authlib libXrdMacaroons.so", "macaroons.maxduration 3600",
                 f"all.sitename {SITE}", "xrd.protocol XrdHttp:1094 libXrdHttp.so", "macaroons.secretkey /s"):
        assert line in lines
    assert not any("http.trace" in line for line in lines)


@pytest.mark.e2e
async def test_user_token_reads_own_area_and_not_anothers(server, xcache_facility):
    alice, bob = token(xcache_facility, "alice"), token(xcache_facility, "bob")
    assert get(server, "/store/user/alice/notes.txt", alice) == (200, b"alice's notes\n")
    assert get(server, "/store/user/alice/notes.txt", bob)[0] == 403
    assert get(server, "/store/user/alice/notes.txt")[0] == 403
    # the origin checks the same tokens: going around the cache gains nothing
    assert get(server, "/store/user/alice/notes.txt", alice, base=server.origin_url) == (200, b"alice's notes\n")
    assert get(server, "/store/user/alice/notes.txt", bob, base=server.origin_url)[0] == 403
    assert get(server, "/store/user/alice/notes.txt", base=server.origin_url)[0] == 403


@pytest.mark.e2e
async def test_a_file_read_once_is_served_by_the_cache_afterwards(server, xcache_facility):
    alice = token(xcache_facility, "alice")
    cached = server.cache_root / BIG_PATH.lstrip("/")
    assert not cached.exists()
    assert get(server, BIG_PATH, alice) == (200, BIG)  # a miss: fetched from the origin
    assert cached.read_bytes() == BIG and cached.with_name(cached.name + ".cinfo").is_file()
    await server.origin.stop()  # the origin is gone ...
    with pytest.raises(OSError):
        urllib.request.urlopen(server.origin_url + BIG_PATH, timeout=5, context=server.ssl_context())
    assert get(server, BIG_PATH, alice) == (200, BIG)  # ... and the cache still serves what it holds
    # the cache still checks every request against the token, cached or not
    assert get(server, BIG_PATH, token(xcache_facility, "bob"))[0] == 403
    assert get(server, BIG_PATH)[0] == 403
    logs = "\n".join(p.read_text(errors="replace") for p in server.run_dir.glob("*.log"))
    assert alice[:60] not in logs  # no token in either log (the URL-encoded form starts the same)


@pytest.mark.e2e
async def test_the_cache_is_https_with_the_runs_ca(server, tmp_path):
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(server.url + DEMO_DATA_PATH, timeout=10)  # the system's CAs do not know it
    assert server.url.startswith("https://localhost:")


@pytest.mark.e2e
async def test_demo_data_is_open_to_read(server, xcache_facility):
    assert get(server, DEMO_DATA_PATH) == (200, DEMO_DATA)
    assert get(server, DEMO_DATA_PATH, token(xcache_facility, "bob")) == (200, DEMO_DATA)


@pytest.mark.e2e
async def test_token_signed_with_another_secret_is_refused(server, tmp_path):
    other = Facility(macaroon_secret_file=str(ensure_macaroon_secret(tmp_path / "other")), xcache_site=SITE,
                     xcache_paths=["/store/user/{username}"])
    assert get(server, "/store/user/alice/notes.txt", token(other, "alice"))[0] == 403


@pytest.mark.e2e
async def test_stop_ends_the_processes_and_removes_files(secret_file, tmp_path):
    srv = XCacheServer(sitename=SITE, secret_file=str(secret_file), ready_timeout=40, log_copy=str(tmp_path / "xcache.log"),
                       ca_copy=str(tmp_path / "ca.pem"))
    await srv.start()
    pids, run_dir, ports = (srv.cache.pid, srv.origin.pid), srv.run_dir, (srv.port, srv.origin_port)
    try:
        assert (tmp_path / "ca.pem").read_bytes() == srv.ca_file.read_bytes()
        if os.geteuid() == 0:  # xrootd refuses root; -R switches its effective uid (real and saved stay 0)
            for pid in pids:
                effective_uid = next(line.split()[2] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:"))
                assert int(effective_uid) == pwd.getpwnam("nobody").pw_uid
    finally:
        await srv.stop()
    await srv.stop()  # idempotent
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not run_dir.exists()  # with the secret's copy and the TLS key
    for port in ports:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    secret = secret_file.read_bytes().strip()
    for name in ("xcache.log", "xcache-origin.log"):  # kept for post-mortems, without the secret
        log = (tmp_path / name).read_bytes()
        assert b"initialization completed" in log
        assert secret not in log and base64.b64decode(secret) not in log


async def test_bad_secret_gives_a_clear_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "short"
    bad.write_bytes(base64.b64encode(b"x" * 8) + b"\n")
    os.chmod(bad, 0o600)
    srv = XCacheServer(sitename=SITE, secret_file=str(bad))
    with pytest.raises(CasaError, match="at least"):
        await srv.start()
    assert srv.process is None and srv.run_dir is None


@pytest.mark.e2e
async def test_port_taken_gives_the_servers_reason_and_leaves_nothing(secret_file):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        srv = XCacheServer(sitename=SITE, secret_file=str(secret_file), port=taken.getsockname()[1], ready_timeout=20)
        with pytest.raises(CasaError, match="(?s)XCache.*exited.*in use"):
            await srv.start()
    assert srv.process is None and srv.run_dir is None


@pytest.mark.e2e
async def test_a_cancelled_start_leaves_nothing(secret_file, monkeypatch):
    srv = XCacheServer(sitename=SITE, secret_file=str(secret_file), ready_timeout=40)

    async def not_yet(port, context):  # xrootd is running, the launcher still waits for it
        return False

    monkeypatch.setattr(srv, "_answers_https", not_yet)
    starting = asyncio.ensure_future(srv.start())
    for _ in range(300):  # bounded: 30 s
        if srv.origin is not None and srv.origin.running:  # the origin starts first
            break
        await asyncio.sleep(0.1)
    assert not starting.done()
    pid, run_dir = srv.origin.pid, srv.run_dir
    starting.cancel()  # Ctrl-C while the demo starts
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert srv.origin is None and srv.cache is None and srv.run_dir is None and not run_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_config_offers_ztn_over_tls_and_the_caches_own_identity():
    lines = xrootd_config(port=1094, sitename=SITE, secret_path="/s", export_root="/e", admin_dir="/a", authdb_path="/d",
                          tls=("/c", "/k", "/ca"), sss_keytab="/kt").splitlines()
    assert "sec.protocol ztn -expiry optional -tokenlib libXrdMacaroons.so" in lines and "sec.protocol sss -s /kt" in lines
    assert "xrootd.seclib libXrdSec.so" in lines and "xrd.tls /c /k" in lines
    plain = xrootd_config(port=1094, sitename=SITE, secret_path="/s", export_root="/e", admin_dir="/a", authdb_path="/d")
    assert "ztn" not in plain  # ztn needs TLS: a server without it offers none
    assert not any(w in line for line in lines for w in ("sec.trace", "http.trace", "pfc.trace"))


@pytest.mark.parametrize("name", ["casa demo server CA 1a2b", "  Mixed   CASE\tname ", "ünïcode CA"])
def test_the_ca_directory_names_files_as_openssl_looks_them_up(tmp_path, name):
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from casa_hub.ca_dir import add_ca, subject_hash

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Casa Test"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(Encoding.PEM)
    openssl = subprocess.run(["openssl", "x509", "-hash", "-noout"], input=pem, capture_output=True, check=True).stdout.decode().strip()
    assert subject_hash(pem) == openssl
    first = add_ca(tmp_path, pem)
    assert first.name == f"{openssl}.0" and add_ca(tmp_path, pem) == first  # kept, not copied twice
    assert add_ca(tmp_path, make_server_tls().ca_pem).parent == tmp_path
