"""Facility configuration, bundles, renewal, audit lines and the secret scan."""

import base64
import datetime as dt
import logging
import os
import stat

import jwt
import pytest
from pymacaroons import Macaroon, Verifier
from traitlets.config import Config

from casa_hub import bundle as b
from casa_hub.auth_state import access_token_from
from casa_hub.condor_token import derive_signing_key
from casa_hub.errors import CasaError, ConfigurationError
from casa_hub.facility import Facility
from casa_hub.plan import plan_session
from tests.facilities import MasterSecrets
from tests.secret_scan import master_secret_forms
from tests.secret_files import write_secret_file

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def facility(make_facility):
    """The tests' facility (tests.facilities), with one XCache area per user."""
    return make_facility(xcache_paths=["/store/user/{username}"])


def decode_condor(token, facility, master):
    key = derive_signing_key(master.signing_key, "POOL")
    return jwt.decode(token, key, algorithms=["HS256"], issuer=facility.trust_domain, options={"verify_exp": False, "verify_iat": False})


def test_full_bundle_for_one_user(facility, master_secrets):
    bundle = facility.issue_bundle("alice@cern.ch", now=NOW)
    paths = {f.path for f in bundle.files}
    assert paths == {
        b.CONDOR_TOKEN_PATH, b.BEARER_TOKEN_PATH,
        b.DASK_CA_PATH, b.DASK_CLIENT_PATH, b.DASK_WORKER_PATH, b.DASK_SCHEDULER_PATH,
    }
    slug = facility.names("alice@cern.ch").slug
    claims = decode_condor(bundle.get(b.CONDOR_TOKEN_PATH).content.decode().strip(), facility, master_secrets)
    assert claims["sub"] == f"{slug}@cms-af.example.org"
    assert claims["scope"] == "condor:/READ condor:/WRITE"
    assert claims["exp"] - claims["iat"] == facility.condor_token_lifetime
    mac = Macaroon.deserialize(bundle.get(b.BEARER_TOKEN_PATH).content.decode().strip())
    assert mac.location == "T2_US_Test"
    caveats = [c.caveat_id for c in mac.first_party_caveats()]
    assert f"name:{slug}" in caveats
    assert "path:/store/user/alice@cern.ch/" in caveats
    v = Verifier()
    v.satisfy_general(lambda c: True)
    assert v.verify(mac, master_secrets.macaroon_secret)
    for f in bundle.files:
        assert f.mode in (0o600, 0o644)
        if f.kind != "dask-ca":
            assert f.mode == 0o600


def test_each_user_has_their_own_identity(facility, master_secrets):
    tokens = {u: facility.issue_bundle(u, now=NOW).get(b.CONDOR_TOKEN_PATH).content.decode().strip() for u in ("alice", "bob")}
    subs = {decode_condor(token, facility, master_secrets)["sub"] for token in tokens.values()}
    assert subs == {"alice@cms-af.example.org", "bob@cms-af.example.org"}


def test_audiences_keep_the_scheduler_key_away_from_the_notebook(facility):
    bundle = facility.issue_bundle("alice", now=NOW)
    notebook = {f.path for f in bundle.for_audience(b.NOTEBOOK).files}
    scheduler = {f.path for f in bundle.for_audience(b.SCHEDULER).files}
    worker = {f.path for f in bundle.for_audience(b.WORKER).files}
    assert b.DASK_SCHEDULER_PATH not in notebook | worker
    assert scheduler == {b.DASK_CA_PATH, b.DASK_SCHEDULER_PATH}
    assert b.CONDOR_TOKEN_PATH not in worker


def test_environment_points_at_the_files(facility, tmp_path):
    bundle = facility.issue_bundle("alice", now=NOW)
    plan = plan_session(facility, "alice", bundle)
    creds = tmp_path / "creds"
    bundle.for_audience(b.NOTEBOOK).write_to(creds)
    env = plan.environment(str(creds), "tls://127.0.0.1:8786")
    assert env["CASA_SCHEDULER_ADDRESS"] == "tls://alice.dask.coffea.casa:8786"
    assert env["_CONDOR_COLLECTOR_HOST"] == "collector.example.org:9619"
    assert env["_CONDOR_TRUST_DOMAIN"] == "cms-af.example.org"
    assert env["XCACHE_HOST"] == "root://xcache.example.org:1094"
    assert os.path.isfile(os.path.join(env["_CONDOR_SEC_TOKEN_DIRECTORY"], "casa"))
    for key in ("BEARER_TOKEN_FILE", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"):
        assert os.path.isfile(env[key]), key
    assert plan.route.rule == "HostSNI(`alice.dask.coffea.casa`)"


def test_written_bundle_is_private(facility, tmp_path):
    creds = tmp_path / "creds"
    facility.issue_bundle("alice", now=NOW).write_to(creds)
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o700
    for dirpath, dirnames, filenames in os.walk(creds):
        for d in dirnames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) == 0o700
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            assert st.st_uid == os.getuid()
            assert not st.st_mode & 0o077 or name == "ca.pem"
            assert not name.startswith(".casa-"), "temporary file left behind"


def test_rewrite_replaces_files_atomically(facility, tmp_path):
    creds = tmp_path / "creds"
    first = facility.issue_bundle("alice", now=NOW)
    first.write_to(creds)
    token_path = creds / b.CONDOR_TOKEN_PATH
    inode = os.stat(token_path).st_ino
    later = NOW + dt.timedelta(days=3)
    renewed = facility.renew_bundle("alice", first, now=later)
    renewed.write_to(creds)
    assert token_path.read_bytes() == renewed.get(b.CONDOR_TOKEN_PATH).content != first.get(b.CONDOR_TOKEN_PATH).content
    assert os.stat(token_path).st_ino != inode  # replaced by rename, not rewritten in place


def test_renewal_after_two_thirds_of_life(facility):
    bundle = facility.issue_bundle("alice", now=NOW)
    assert facility.renew_bundle("alice", bundle, now=NOW + dt.timedelta(hours=1)) is None
    # the macaroon (12 h) is due after 8 h, the IDTOKEN (3 days) is not
    renewed = facility.renew_bundle("alice", bundle, now=NOW + dt.timedelta(hours=8, seconds=1))
    assert renewed.get(b.BEARER_TOKEN_PATH).content != bundle.get(b.BEARER_TOKEN_PATH).content
    assert renewed.get(b.CONDOR_TOKEN_PATH) == bundle.get(b.CONDOR_TOKEN_PATH)
    assert renewed.get(b.DASK_CLIENT_PATH) == bundle.get(b.DASK_CLIENT_PATH)  # the CA key is gone: TLS is kept
    renewed2 = facility.renew_bundle("alice", renewed, now=NOW + dt.timedelta(days=2, seconds=1))
    assert renewed2.get(b.CONDOR_TOKEN_PATH) != bundle.get(b.CONDOR_TOKEN_PATH)


def test_bearer_token_from_the_idp_when_no_xcache_secret(tmp_path):
    facility = Facility(domain="coffea.casa")
    expiry = NOW + dt.timedelta(hours=1)
    bundle = facility.issue_bundle("alice", access_token="at-1", access_token_expires_at=expiry, now=NOW)
    assert bundle.get(b.BEARER_TOKEN_PATH).content == b"at-1\n"
    assert bundle.get(b.CONDOR_TOKEN_PATH) is None  # no signing key configured
    assert facility.renew_bundle("alice", bundle, access_token="at-1", now=NOW) is None
    renewed = facility.renew_bundle("alice", bundle, access_token="at-2", now=NOW)
    assert renewed.get(b.BEARER_TOKEN_PATH).content == b"at-2\n"


def test_audit_line_per_issuance_without_tokens(facility, caplog):
    caplog.set_level(logging.INFO, logger="casa.audit")
    bundle = facility.issue_bundle("alice", now=NOW)
    lines = [r.getMessage() for r in caplog.records if r.name == "casa.audit"]
    kinds = {line.split("kind=")[1].split()[0] for line in lines}
    assert kinds == {"condor-idtoken", "xcache-macaroon", "dask-tls"}
    assert all("user=alice" in line and "expires=" in line for line in lines)
    text = "\n".join(lines)
    for f in bundle.files:
        if f.kind in ("condor-token", "xcache-token"):
            token = f.content.decode().strip()
            assert token not in text and token[-20:] not in text


def test_no_master_secret_in_any_bundle_repr_or_log(facility, caplog, tmp_path, master_secrets):
    """Scan everything a user receives for the signing key and macaroon secret (raw and base64)."""
    haystacks = []
    for user in ("alice", "bob", "Carl.Lundstedt@cern.ch"):
        bundle = facility.issue_bundle(user, now=NOW, access_token="idp-token")
        renewed = facility.renew_bundle(user, bundle, now=NOW + dt.timedelta(days=3))
        for bun in (bundle, renewed):
            haystacks += [f.content for f in bun.files]
            haystacks.append(repr(bun).encode())
            plan = plan_session(facility, user, bun)
            haystacks.append(repr(plan.environment("/creds", "tls://127.0.0.1:8786")).encode())
            haystacks.append(repr(plan.scheduler.command("/creds")).encode())
            haystacks.append(repr(plan).encode())
    haystacks.append("\n".join(r.getMessage() for r in caplog.records).encode())
    haystacks.append(repr(facility.signing_key()).encode() + repr(facility.macaroon_secret()).encode())
    blob = b"\n".join(haystacks)
    for forms in master_secret_forms(master_secrets).values():
        for form in forms:
            assert form not in blob
    assert b"BEGIN" in blob  # the scan did see the PEM files


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path, mode, master_secrets):
    facility = Facility(signing_key_file=write_secret_file(tmp_path / "POOL", master_secrets.signing_key, mode))
    with pytest.raises(ConfigurationError, match="chmod 600"):
        facility.load_secrets()


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: str(p / "missing"), "does not exist"),
        (lambda p: write_secret_file(p / "empty", b""), "is empty"),
        (lambda p: str(p), "not a regular file"),
        (lambda p: (os.symlink(write_secret_file(p / "POOL", MasterSecrets.fresh().signing_key, 0o644), p / "link"), str(p / "link"))[1], "chmod 600"),
    ],
)
def test_bad_signing_key_file(tmp_path, setup, message):
    facility = Facility(signing_key_file=setup(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        facility.issue_bundle("alice")


@pytest.mark.parametrize(
    "content,message",
    [(b"not base64 !!\n", "not base64"), (base64.b64encode(b"short") + b"\n", "at least 32")],
)
def test_bad_macaroon_secret(tmp_path, content, message):
    facility = Facility(macaroon_secret_file=write_secret_file(tmp_path / "m", content))
    with pytest.raises(CasaError, match=message):
        facility.load_secrets()


def test_a_symlinked_key_file_is_followed(tmp_path, master_secrets):
    """Kubernetes mounts a Secret's files as links into ``..data``: the file they reach counts."""
    data = tmp_path / "..data"
    data.mkdir()
    write_secret_file(data / "POOL", master_secrets.signing_key)
    os.symlink("..data/POOL", tmp_path / "POOL")
    facility = Facility(signing_key_file=str(tmp_path / "POOL"))
    assert facility.signing_key().reveal() == master_secrets.signing_key


def test_key_files_are_read_once(facility, tmp_path):
    facility.issue_bundle("alice", now=NOW)
    os.unlink(facility.signing_key_file)
    facility.issue_bundle("bob", now=NOW)  # still works from memory


@pytest.mark.parametrize(
    "trait,value,message",
    [
        ("domain", "not a domain!", "not a DNS label"),
        ("condor_authz", ["READ", "ROOT"], "unknown"),
        ("xcache_activities", ["DOWNLOAD", "FLY"], "unknown XRootD activity"),
        ("condor_identity", "{user}@x", "unknown field"),
        ("xcache_paths", ["/a", "/b"], "exactly one prefix"),
        ("xcache_token_lifetime", 90000, "xcache_max_lifetime"),
        # a lower maxduration alone would make every spawn fail to issue the default 12 h macaroon
        ("xcache_max_lifetime", 3600, "xcache_token_lifetime=43200"),
        ("tls_lifetime", 0, "positive"),  # certificates that expire as they are issued
        ("condor_token_lifetime", -60, "positive"),
        ("renew_fraction", 0.0, "between 0 and 1"),  # every poll would re-issue every token
        ("renew_fraction", 1.5, "between 0 and 1"),  # tokens renewed only after they died
        ("dask_port", 0, "not a TCP port"),
        ("scheduler_port", 70000, "not a TCP port"),
        ("signing_key_id", "my key", "invalid signing key id"),
        ("trust_domain", "red-condor.unl.edu, other", "invalid HTCondor trust domain"),
    ],
)
def test_bad_configuration_is_a_clear_error(trait, value, message):
    with pytest.raises(ConfigurationError, match=message):
        Facility(**{trait: value})


def test_xcache_lifetimes_are_checked_together_in_any_order():
    for settings in ({"xcache_max_lifetime": 3600, "xcache_token_lifetime": 1800},
                     {"xcache_token_lifetime": 1800, "xcache_max_lifetime": 3600}):
        cfg = Config()
        for name, value in settings.items():
            setattr(cfg.Facility, name, value)
        facility = Facility(config=cfg)
        assert (facility.xcache_token_lifetime, facility.xcache_max_lifetime) == (1800, 3600)


def test_every_trait_is_documented():
    for name, trait in Facility.class_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


def test_atomic_write_that_fails_leaves_no_temporary_file_and_no_open_descriptor(tmp_path):
    from casa_hub.files import atomic_write

    target = tmp_path / "token"
    atomic_write(target, b"old", mode=0o600)
    open_fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises((OSError, OverflowError)):
            atomic_write(target, b"new", uid=-5)  # chown fails (as for a non-root writer: EPERM)
    assert len(os.listdir("/proc/self/fd")) == open_fds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
    assert target.read_bytes() == b"old"
    assert stat.S_IMODE(os.stat(atomic_write(target, b"new", mode=0o640)).st_mode) == 0o640


@pytest.mark.parametrize(
    "auth_state,token,expires",
    [
        (None, None, None),
        ({}, None, None),
        ({"access_token": ""}, None, None),
        ({"access_token": "at-9f3c2e"}, "at-9f3c2e", None),
        ({"access_token": "at-9f3c2e", "casa": {"access_token_expires_at": 1800000000}}, "at-9f3c2e", dt.datetime.fromtimestamp(1800000000, dt.timezone.utc)),
        ({"access_token": "at-9f3c2e", "casa": {"access_token_expires_at": "soon"}}, "at-9f3c2e", None),
        ({"access_token": "at-9f3c2e", "casa": "not a dict"}, "at-9f3c2e", None),
    ],
)
def test_access_token_from_auth_state(auth_state, token, expires):
    found = access_token_from(auth_state)
    assert (found.token if found else None) == token
    assert (found.expires_at if found else None) == expires
    if found:
        assert token not in repr(found)


def test_credential_metadata_round_trips_without_content(facility):
    """What spawner state keeps across a hub restart: everything but the credential itself."""
    for cred in facility.issue_bundle("alice", now=NOW).files:
        meta = cred.metadata()
        assert cred.content.decode(errors="replace")[:30] not in repr(meta)
        assert b.CredentialFile.from_metadata(meta, cred.content) == cred
