"""The ``casa`` command-line contract: names and flags operators and tests rely on."""

import base64
import datetime as dt
import os
import stat

import jwt
import pytest
from cryptography import x509
from pymacaroons import Macaroon

from casa_hub.condor_token import derive_signing_key, make_idtoken
from tests.casa_cli import run_casa
from tests.secret_files import write_secret_file

KEY = b"\x00cli-test-key\x00" * 3


def assert_clean_error(result, fragment):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert fragment in lines[-1], result.stderr  # the last line says what is wrong
    # anything before it is argparse's usage text, never a traceback or a log dump
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), result.stderr


def test_condor_token_is_deterministic_and_matches_the_library(tmp_path):
    key = write_secret_file(tmp_path / "POOL", KEY)
    args = ["mint", "condor-token", "--signing-key", key, "--trust-domain", "af.example.org",
            "--identity", "alice@af.example.org", "--authz", "READ", "--authz", "ADVERTISE_STARTD",
            "--lifetime", 600, "--issued-at", 1700000000, "--token-id", "0123456789abcdef0123456789abcdef"]
    result = run_casa(*args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert run_casa(*args).stdout.strip() == token
    expected = make_idtoken(KEY, trust_domain="af.example.org", identity="alice@af.example.org",
                            authz=["READ", "ADVERTISE_STARTD"], lifetime=600, issued_at=1700000000,
                            token_id="0123456789abcdef0123456789abcdef")
    assert token == expected.token
    claims = jwt.decode(token, derive_signing_key(KEY, "POOL"), algorithms=["HS256"], options={"verify_exp": False})
    assert claims["scope"] == "condor:/READ condor:/ADVERTISE_STARTD"
    assert claims["exp"] == 1700000600


def test_condor_token_with_named_kid(tmp_path):
    key = write_secret_file(tmp_path / "casa", KEY)
    token = run_casa("mint", "condor-token", "--signing-key", key, "--trust-domain", "t", "--identity", "bob@t", "--kid", "casa").stdout.strip()
    assert jwt.get_unverified_header(token)["kid"] == "casa"
    jwt.decode(token, derive_signing_key(KEY, "casa"), algorithms=["HS256"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, derive_signing_key(KEY, "POOL"), algorithms=["HS256"])


def test_xcache_token(tmp_path):
    secret = os.urandom(32)
    path = write_secret_file(tmp_path / "macaroon", base64.b64encode(secret) + b"\n")
    result = run_casa("mint", "xcache-token", "--secret-key", path, "--location", "T2_US_Test", "--name", "alice",
                      "--activity", "DOWNLOAD,LIST", "--path", "/store/user/alice", "--lifetime", 3600, "--identifier", "id-1")
    assert result.returncode == 0, result.stderr
    mac = Macaroon.deserialize(result.stdout.strip())
    assert mac.identifier == "id-1" and mac.location == "T2_US_Test"
    caveats = [c.caveat_id for c in mac.first_party_caveats()]
    assert caveats[:3] == ["name:alice", "activity:DOWNLOAD,LIST", "path:/store/user/alice/"]
    before = dt.datetime.strptime(caveats[3], "before:%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((before - dt.datetime.now(dt.timezone.utc)).total_seconds() - 3600) < 120


def test_xcache_token_with_explicit_expiry(tmp_path):
    path = write_secret_file(tmp_path / "macaroon", base64.b64encode(os.urandom(32)) + b"\n")
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run_casa("mint", "xcache-token", "--secret-key", path, "--location", "S", "--name", "a",
                      "--activity", "DOWNLOAD", "--path", "/store", "--expires", expires)
    assert result.returncode == 0, result.stderr
    assert f"before:{expires}" in [c.caveat_id for c in Macaroon.deserialize(result.stdout.strip()).first_party_caveats()]


def test_dask_tls_writes_four_private_files_and_no_ca_key(tmp_path):
    out = tmp_path / "tls"
    result = run_casa("mint", "dask-tls", "--hostname", "alice.dask.coffea.casa", "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "client.pem", "scheduler.pem", "worker.pem"]
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert b"PRIVATE KEY" not in (out / "ca.pem").read_bytes()
    for name in ("scheduler.pem", "client.pem", "worker.pem"):
        data = (out / name).read_bytes()
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
        assert data.count(b"PRIVATE KEY-----") == 2  # one key: BEGIN and END
        assert data.index(b"CERTIFICATE") < data.index(b"PRIVATE KEY")
        assert x509.load_pem_x509_certificate(data).issuer == ca.subject


XCACHE_MAC = ["mint", "xcache-token", "--secret-key", "{mac}", "--location", "S", "--name", "a"]
XCACHE_KEY = ["mint", "xcache-token", "--secret-key", "{key}", "--location", "S", "--name", "a"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["mint", "condor-token", "--signing-key", "{tmp}/missing", "--trust-domain", "t", "--identity", "i"], "does not exist"),
        (["mint", "condor-token", "--signing-key", "{world}", "--trust-domain", "t", "--identity", "i"], "chmod 600"),
        (["mint", "condor-token", "--signing-key", "{key}", "--trust-domain", "t", "--identity", "i", "--authz", "ROOT"], "unknown HTCondor authorization"),
        (["mint", "condor-token", "--signing-key", "{key}", "--trust-domain", "t", "--identity", "i", "--token-id", "xyz"], "32 hex"),
        (["mint", "condor-token", "--signing-key", "{key}", "--trust-domain", "", "--identity", "i"], "must not be empty"),
        ([*XCACHE_MAC, "--activity", "FLY", "--path", "/store", "--lifetime", "60"], "unknown XRootD activity"),
        ([*XCACHE_MAC, "--activity", "LIST", "--path", "/store", "--lifetime", "90000"], "maxduration=86400"),
        ([*XCACHE_MAC, "--activity", "LIST", "--path", "store", "--lifetime", "60"], "absolute path"),
        ([*XCACHE_MAC, "--activity", "LIST", "--path", "/store", "--expires", "tomorrow"], "YYYY-mm-dd"),
        ([*XCACHE_KEY, "--activity", "LIST", "--path", "/store", "--lifetime", "60"], "not base64"),
        (["mint", "dask-tls", "--hostname", "", "--out", "{tmp}/x"], "must not be empty"),
        (["mint", "dask-tls", "--hostname", "h", "--out", "{tmp}/x", "--lifetime", "0"], "lifetime must be positive"),
        (["names", ""], "must not be empty"),
        (["--log-level", "loud", "names", "alice"], "invalid choice: 'LOUD'"),
        (["names", "alice", "--domain", "bad domain"], "not a DNS label"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, fragment):
    paths = {
        "tmp": tmp_path,
        "key": write_secret_file(tmp_path / "POOL", KEY),
        "world": write_secret_file(tmp_path / "world", KEY, 0o644),
        "mac": write_secret_file(tmp_path / "mac", base64.b64encode(os.urandom(32)) + b"\n"),
    }
    result = run_casa(*[a.format(**paths) for a in args])
    assert_clean_error(result, fragment)


def test_secrets_never_printed(tmp_path):
    secret = os.urandom(32)
    mac = write_secret_file(tmp_path / "mac", base64.b64encode(secret) + b"\n")
    key = write_secret_file(tmp_path / "POOL", KEY)
    outputs = [
        run_casa("--log-level", "DEBUG", "mint", "xcache-token", "--secret-key", mac, "--location", "S", "--name", "a",
                 "--activity", "LIST", "--path", "/store", "--lifetime", "60"),
        run_casa("--log-level", "DEBUG", "mint", "condor-token", "--signing-key", key, "--trust-domain", "t", "--identity", "i"),
    ]
    text = "".join(r.stdout + r.stderr for r in outputs).encode()
    for form in (secret, base64.b64encode(secret), KEY, base64.b64encode(KEY), KEY.hex().encode()):
        assert form not in text
