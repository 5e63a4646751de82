"""IDTOKENs from ``casa_hub.condor_token`` against the real HTCondor library.

A tiny C++ shim (``tests/condor_shim/token_shim.cpp``) is compiled at test time
against ``libcondor_utils`` from the ``htcondor`` wheel and calls
``Condor_Auth_Passwd::generate_token`` -- the function behind
``condor_token_create``.  HTCondor picks ``iat`` (the current time) and ``jti``
(random) itself, so each test decodes HTCondor's token, feeds the same ``iat``,
``jti`` and ``exp - iat`` to :func:`make_idtoken` and compares the two tokens as
strings, byte for byte.

Nothing here is skipped: a missing ``g++`` or a missing ``htcondor`` wheel is a
test failure (both are test dependencies of the project).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from casa_hub.condor_token import derive_signing_key, make_idtoken, unscramble
from tests.secret_files import write_secret_file

SHIM_SOURCE = Path(__file__).parent / "condor_shim" / "token_shim.cpp"
JTI = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- keys


def _bytes(label: str, n: int = 64) -> bytes:
    """Deterministic key material (so a failure can be reproduced)."""
    return hashlib.shake_256(label.encode()).digest(n)


# Plain pool: an ASCII key with a trailing newline, as `openssl rand -base64 32 > f`
# writes it -- HTCondor uses the newline as key material too.
PLAIN_POOL_KEY = base64.b64encode(_bytes("plain-pool", 32)) + b"\n"
# Raw NUL bytes, and DE AD BE EF runs that *become* NUL once unscrambled.
# (DE AD BE EF at an offset that is a multiple of 4 unscrambles to 00 00 00 00.)
NUL_POOL_KEY = b"\x00" + _bytes("nul-pool", 19) + b"\xde\xad\xbe\xef" * 2 + b"\x00\x00" + _bytes("tail", 9)
CASA_KEY = _bytes("casa", 24) + b"\x00" + _bytes("casa-2", 39)  # 64 bytes, NUL in the middle
CASA_KEY_NUL = b"\xde\xad\xbe\xef" + b"\x00" * 3 + _bytes("casa-nul", 40)
HUB_KEY = b"hub signing key for tests"

POOLS = {
    "plain": {
        "trust_domain": "test.domain",
        "pool_key": PLAIN_POOL_KEY,
        "named": {"casa": CASA_KEY, "hub-2025.v2": HUB_KEY},
    },
    "nul": {
        # a '/' in the issuer exercises HTCondor's "\/" escaping
        "trust_domain": "pool.example.org/casa",
        "pool_key": NUL_POOL_KEY,
        "named": {"casa": CASA_KEY_NUL},
    },
}


def _key_bytes(pool: str, kid: str) -> bytes:
    spec = POOLS[pool]
    return spec["pool_key"] if kid == "POOL" else spec["named"][kid]


# -------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    pool: str
    identity: str
    kid: str
    authz: tuple[str, ...]
    lifetime: int

    @property
    def id(self) -> str:
        ident = self.identity.encode("unicode_escape").decode("ascii")
        return f"{self.pool}-{self.kid}-{ident}-{'+'.join(self.authz)}-{self.lifetime}s"


CASES = [
    Case("plain", "alice@test.domain", "POOL", ("READ",), 3600),
    Case("plain", "alice@test.domain", "POOL", ("READ", "WRITE"), 86400),
    Case("plain", "alice@test.domain", "POOL", ("WRITE", "READ"), 3600),  # order is kept
    Case("plain", "bob", "POOL", ("READ", "WRITE"), 60),  # identity without '@'
    Case("plain", "carol@cms.example.org", "casa", ("ADVERTISE_STARTD",), 600),
    Case("plain", "worker@test.domain", "casa", ("ADVERTISE_STARTD", "ADVERTISE_MASTER", "READ"), 1),
    Case(
        "plain",
        "admin@test.domain",
        "POOL",
        ("ADMINISTRATOR", "CONFIG", "DAEMON", "NEGOTIATOR", "ADVERTISE_SCHEDD", "ALLOW"),
        7 * 86400,
    ),
    Case("plain", "alice@test.domain", "hub-2025.v2", ("READ", "WRITE"), 1800),
    Case("nul", "alice@test.domain", "POOL", ("READ", "WRITE"), 86400),
    Case("nul", "bob", "casa", ("READ",), 60),
    Case("nul", "svc/hub@test.domain", "casa", ("READ",), 3600),  # '/' in sub
    Case("nul", "j\u00fcrgen@test.domain", "POOL", ("READ",), 120),  # non-ASCII (raw UTF-8)
    Case("nul", 'q"uote\\@test.domain', "casa", ("WRITE",), 3600),  # JSON escapes
    Case("nul", "ctl\x01\x08\x7f@test.domain", "POOL", ("READ",), 120),  # control chars, DEL
]


# ----------------------------------------------------------------------- the shim


def _libcondor_utils() -> Path:
    try:
        dist = importlib.metadata.distribution("htcondor")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the 'htcondor' wheel is not installed; it is a test dependency (pip install -e '.[test]')")
    libs = Path(str(dist.locate_file("htcondor.libs")))
    found = sorted(libs.glob("libcondor_utils*.so*"))
    if not found:
        pytest.fail(f"no libcondor_utils*.so in {libs}; the htcondor wheel layout changed")
    return found[0]


@pytest.fixture(scope="session")
def token_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.fail("g++ is required to build the HTCondor token shim (apt-get install g++)")
    lib = _libcondor_utils()
    out = tmp_path_factory.mktemp("condor_shim") / "token_shim"
    cmd = [
        gxx,
        "-std=c++17",
        "-O1",
        "-o",
        str(out),
        str(SHIM_SOURCE),
        str(lib),
        # the library's own dependencies (libclassad, libssl, ...) sit next to it
        f"-Wl,-rpath,{lib.parent}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"building the shim failed:\n{' '.join(cmd)}\n{proc.stderr}"
    return out


class CondorPool:
    """An environment-only HTCondor configuration with signing keys in a temp dir."""

    def __init__(self, shim: Path, root: Path, trust_domain: str, pool_key: bytes, named: dict[str, bytes]):
        self.shim = shim
        self.trust_domain = trust_domain
        root.chmod(0o700)
        pwdir = root / "passwords.d"
        pwdir.mkdir(mode=0o700)
        pool_file = root / "pool_signing_key"
        # HTCondor reads signing keys with read_secure_file(): owned by the (effective) user, 0600
        write_secret_file(pool_file, pool_key)
        for kid, data in named.items():
            write_secret_file(pwdir / kid, data)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith("_CONDOR_") and k.upper() not in ("CONDOR_CONFIG", "CONDOR_IDS")
        }
        env.update(
            {
                "CONDOR_CONFIG": "ONLY_ENV",
                "_CONDOR_TRUST_DOMAIN": trust_domain,
                "_CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE": str(pool_file),
                "_CONDOR_SEC_PASSWORD_DIRECTORY": str(pwdir),
                "_CONDOR_LOG": str(root),
            }
        )
        self.env = env

    def _run(self, args: list[str], stdin: bytes = b"") -> list[str]:
        proc = subprocess.run(
            [str(self.shim), *args], input=stdin, env=self.env, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, (
            f"token shim exited {proc.returncode}\nstdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
        )
        return proc.stdout.decode("ascii").splitlines()

    def tokens(self, cases: list[Case]) -> list[str]:
        """HTCondor's tokens for ``cases``, in order (one shim process for all)."""
        lines = []
        for c in cases:
            assert "\t" not in c.identity and "\n" not in c.identity
            lines.append(f"{c.identity}\t{c.kid}\t{c.lifetime}\t{' '.join(c.authz)}\n".encode("utf-8"))
        answers = self._run([], b"".join(lines))
        assert len(answers) == len(cases), answers
        out = []
        for c, answer in zip(cases, answers):
            kind, _, value = answer.partition(" ")
            assert kind == "TOKEN", f"HTCondor refused {c.id}: {value}"
            out.append(value)
        return out

    def signing_secret(self, kid: str) -> bytes:
        """The secret HTCondor feeds to HKDF for ``kid`` (after unscramble/doubling)."""
        (answer,) = self._run(["--signing-key", kid])
        kind, _, value = answer.partition(" ")
        assert kind == "KEY", f"HTCondor cannot read signing key {kid}: {value}"
        return bytes.fromhex(value)


@pytest.fixture(scope="session")
def condor_pools(token_shim: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CondorPool]:
    return {
        name: CondorPool(token_shim, tmp_path_factory.mktemp(f"condor_{name}"), **spec)
        for name, spec in POOLS.items()
    }


@dataclass(frozen=True)
class Issued:
    token: str
    before: float
    after: float


@pytest.fixture(scope="session")
def htcondor_tokens(condor_pools: dict[str, CondorPool]) -> dict[Case, Issued]:
    issued: dict[Case, Issued] = {}
    for name, pool in condor_pools.items():
        cases = [c for c in CASES if c.pool == name]
        before = time.time()
        tokens = pool.tokens(cases)
        after = time.time()
        issued.update({c: Issued(t, before, after) for c, t in zip(cases, tokens)})
    return issued


# ------------------------------------------------------------------------ helpers


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _split(token: str) -> tuple[dict, dict, bytes]:
    header, payload, signature = token.split(".")
    return json.loads(_b64decode(header)), json.loads(_b64decode(payload)), _b64decode(signature)


def _ours_like(case: Case, theirs: str):
    """make_idtoken with HTCondor's own iat / jti / exp."""
    _, claims, _ = _split(theirs)
    return make_idtoken(
        _key_bytes(case.pool, case.kid),
        trust_domain=POOLS[case.pool]["trust_domain"],
        identity=case.identity,
        kid=case.kid,
        authz=list(case.authz),
        lifetime=claims["exp"] - claims["iat"],
        issued_at=claims["iat"],
        token_id=claims["jti"],
    )


# -------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_token_matches_htcondor_byte_for_byte(case: Case, htcondor_tokens: dict[Case, Issued]) -> None:
    issued = htcondor_tokens[case]
    theirs = issued.token
    header, claims, _ = _split(theirs)

    # What HTCondor put in the token.
    assert header == {"alg": "HS256", "kid": case.kid}
    assert claims["iss"] == POOLS[case.pool]["trust_domain"]
    assert claims["sub"] == case.identity  # verbatim: no '@domain' is appended
    assert claims["scope"] == " ".join(f"condor:/{a}" for a in case.authz)
    assert JTI.match(claims["jti"]), claims["jti"]
    assert int(issued.before) - 1 <= claims["iat"] <= issued.after + 1
    # HTCondor reads the clock separately for iat and exp.
    assert claims["exp"] - claims["iat"] in (case.lifetime, case.lifetime + 1)
    assert sorted(claims) == ["exp", "iat", "iss", "jti", "scope", "sub"]

    ours = _ours_like(case, theirs)
    if ours.token != theirs:
        o_head, o_payload, _ = ours.token.split(".")
        t_head, t_payload, _ = theirs.split(".")
        detail = (
            f"\nheader  ours  {_b64decode(o_head)!r}\n        condor {_b64decode(t_head)!r}"
            f"\npayload ours  {_b64decode(o_payload)!r}\n        condor {_b64decode(t_payload)!r}"
        )
        pytest.fail(f"token differs from HTCondor's{detail}\nours   {ours.token}\ncondor {theirs}")
    assert (ours.issued_at, ours.token_id) == (claims["iat"], claims["jti"])
    assert ours.expires_at == claims["exp"]


def test_payload_escaping_matches_htcondor(htcondor_tokens: dict[Case, Issued]) -> None:
    """The raw JSON bytes HTCondor (picojson) writes for the awkward cases."""
    by_ident = {c.identity: issued.token for c, issued in htcondor_tokens.items() if c.pool == "nul"}
    raw = {ident: _b64decode(tok.split(".")[1]) for ident, tok in by_ident.items()}
    assert b'"iss":"pool.example.org\\/casa"' in raw["svc/hub@test.domain"]
    assert b'"sub":"svc\\/hub@test.domain"' in raw["svc/hub@test.domain"]
    assert b'"scope":"condor:\\/READ"' in raw["svc/hub@test.domain"]
    assert b'"sub":"j\xc3\xbcrgen@test.domain"' in raw["j\u00fcrgen@test.domain"]  # raw UTF-8
    assert b'"sub":"q\\"uote\\\\@test.domain"' in raw['q"uote\\@test.domain']
    ctl = raw["ctl\x01\x08\x7f@test.domain"]
    assert b'"sub":"ctl\\u0001\\b\\u007f@test.domain"' in ctl  # picojson escapes DEL too


@pytest.mark.parametrize(
    "pool,kid",
    [(p, k) for p, spec in POOLS.items() for k in ["POOL", *spec["named"]]],
)
def test_signing_secret_matches_htcondor_and_keeps_nul_bytes(
    pool: str, kid: str, condor_pools: dict[str, CondorPool]
) -> None:
    """HTCondor's HKDF input: the whole unscrambled file (doubled for POOL), NULs kept."""
    data = _key_bytes(pool, kid)
    expected = unscramble(data) * (2 if kid == "POOL" else 1)
    secret = condor_pools[pool].signing_secret(kid)
    assert len(secret) == len(expected)
    assert secret == expected
    if pool == "nul":
        assert b"\x00" in data and b"\x00" in unscramble(data)


def test_identity_without_at_is_not_qualified(htcondor_tokens: dict[Case, Issued]) -> None:
    subs = {_split(i.token)[1]["sub"] for c, i in htcondor_tokens.items() if c.identity == "bob"}
    assert subs == {"bob"}


def test_htcondor_jti_is_fresh_lowercase_hex(htcondor_tokens: dict[Case, Issued]) -> None:
    jtis = [_split(i.token)[1]["jti"] for i in htcondor_tokens.values()]
    assert all(JTI.match(j) for j in jtis)
    assert len(set(jtis)) == len(jtis)


VERIFY_CASES = [c for c in CASES if c.lifetime >= 60]


@pytest.mark.parametrize("case", VERIFY_CASES, ids=[c.id for c in VERIFY_CASES])
def test_pyjwt_verifies_with_derived_key(case: Case, htcondor_tokens: dict[Case, Issued]) -> None:
    theirs = htcondor_tokens[case].token
    ours = _ours_like(case, theirs).token
    key = derive_signing_key(_key_bytes(case.pool, case.kid), case.kid)
    trust_domain = POOLS[case.pool]["trust_domain"]
    for token in (theirs, ours):
        claims = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            issuer=trust_domain,
            options={"require": ["exp", "iat", "iss", "sub", "jti"]},
        )
        assert claims["sub"] == case.identity
        assert jwt.get_unverified_header(token)["kid"] == case.kid


# "raw file bytes" can be shorter than 32 bytes; PyJWT warns about that, rightly.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("case", VERIFY_CASES, ids=[c.id for c in VERIFY_CASES])
def test_pyjwt_rejects_wrong_keys(case: Case, htcondor_tokens: dict[Case, Issued]) -> None:
    theirs = htcondor_tokens[case].token
    data = _key_bytes(case.pool, case.kid)
    other_kid = "casa" if case.kid == "POOL" else "POOL"
    wrong_keys = {
        "another key file": derive_signing_key(b"not the signing key", case.kid),
        "doubling rule of the other kid": derive_signing_key(data, other_kid),
        "raw file bytes as HMAC key": data,
        "key without unscrambling": derive_signing_key(unscramble(data), case.kid),
        "key with a flipped last byte": derive_signing_key(data[:-1] + bytes([data[-1] ^ 1]), case.kid),
    }
    if b"\x00" in data:
        wrong_keys["key truncated at the first NUL"] = derive_signing_key(
            data[: data.index(b"\x00")] or b"\x01", case.kid
        )
    for what, key in wrong_keys.items():
        try:
            jwt.decode(theirs, key, algorithms=["HS256"], options={"verify_exp": False})
        except jwt.InvalidSignatureError:
            continue
        pytest.fail(f"HTCondor's token verified with the wrong key ({what})")
