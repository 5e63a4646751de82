"""The credential sync sidecar on real directories, including the kubelet's ``..data`` swap layout."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casa_session.credsync import CredentialSync, SyncError, key_to_path, main

NOBODY = 65534


class KubeletSecretVolume:
    """A directory laid out as the kubelet writes Secret volumes (AtomicWriter)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.generation = 0

    def publish(self, data: dict[str, bytes]) -> None:
        self.generation += 1
        snapshot = self.root / f"..2026_11_26_00_00_00.{self.generation:04d}"
        snapshot.mkdir()
        for key, content in data.items():
            (snapshot / key).write_bytes(content)
            os.chmod(snapshot / key, 0o444)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        os.symlink(snapshot.name, tmp_link)
        os.replace(tmp_link, self.root / "..data")  # the atomic swap
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for entry in os.listdir(self.root):
            if not entry.startswith("..") and not (self.root / entry).exists():
                os.unlink(self.root / entry)  # dangling: key removed
        if old:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


BUNDLE = {
    "condor__tokens.d__casa": b"eyJhbGciOiJIUzI1NiJ9.token\n",
    "bearer_token": b"macaroon-1\n",
    "dask__ca.pem": b"-----BEGIN CERTIFICATE-----\n",
    "dask__client.pem": b"client\n",
}


def test_key_to_path_maps_flat_keys_and_refuses_escapes():
    assert key_to_path("condor__tokens.d__casa") == "condor/tokens.d/casa"
    assert key_to_path("bearer_token") == "bearer_token"
    for bad in ["..__etc__passwd", "a____b", "__x", "x__", ".__x", "a__..__b"]:
        with pytest.raises(SyncError, match="refusing Secret key"):
            key_to_path(bad)


def test_copies_kubelet_layout_private_and_owned(tmp_path):
    secret = KubeletSecretVolume(tmp_path / "secret")
    secret.publish(BUNDLE)
    creds = tmp_path / "creds"
    written = CredentialSync(secret.root, creds, uid=NOBODY, gid=NOBODY).sync_once()

    assert sorted(written) == sorted(key_to_path(k) for k in BUNDLE)
    assert (creds / "condor/tokens.d/casa").read_bytes() == BUNDLE["condor__tokens.d__casa"]
    for rel in written:
        st = os.lstat(creds / rel)
        assert stat.S_ISREG(st.st_mode) and mode(creds / rel) == 0o600
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    for d in [creds, creds / "condor", creds / "condor/tokens.d", creds / "dask"]:
        assert mode(d) == 0o700 and os.lstat(d).st_uid == NOBODY
    # nothing of the kubelet's bookkeeping is copied
    assert not any(p.name.startswith("..") for p in creds.rglob("*"))


def test_follows_the_data_symlink_swap(tmp_path):
    secret = KubeletSecretVolume(tmp_path / "secret")
    secret.publish(BUNDLE)
    creds = tmp_path / "creds"
    sync = CredentialSync(secret.root, creds)
    sync.sync_once()
    token_inode = os.lstat(creds / "bearer_token").st_ino

    renewed = dict(BUNDLE, bearer_token=b"macaroon-2\n")
    del renewed["dask__client.pem"]
    secret.publish(renewed)
    changed = sync.sync_once()

    assert sorted(changed) == ["bearer_token", "dask/client.pem"]
    assert (creds / "bearer_token").read_bytes() == b"macaroon-2\n"
    assert os.lstat(creds / "bearer_token").st_ino != token_inode  # replaced by rename, not rewritten in place
    assert not (creds / "dask/client.pem").exists()
    assert sync.sync_once() == []  # nothing to do when nothing changed


def test_a_swap_during_the_read_is_read_again(tmp_path, monkeypatch):
    """The kubelet swaps ``..data`` and removes the old snapshot while a pass lists it:
    the pass reads the new snapshot (the init container has only one pass)."""
    secret = KubeletSecretVolume(tmp_path / "secret")
    secret.publish(BUNDLE)
    real_listdir = os.listdir
    raced = []

    def listdir_racing_the_kubelet(path):
        if not raced:
            raced.append(path)
            secret.publish(dict(BUNDLE, bearer_token=b"macaroon-2\n"))  # removes the snapshot being listed
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir_racing_the_kubelet)
    creds = tmp_path / "creds"
    CredentialSync(secret.root, creds).sync_once()
    assert raced and (creds / "bearer_token").read_bytes() == b"macaroon-2\n"


def test_repairs_tampered_files(tmp_path):
    source = tmp_path / "plain"
    source.mkdir()
    (source / "bearer_token").write_bytes(b"tok\n")
    creds = tmp_path / "creds"
    sync = CredentialSync(source, creds)
    sync.sync_once()
    os.chmod(creds / "bearer_token", 0o644)
    assert sync.sync_once() == ["bearer_token"]
    assert mode(creds / "bearer_token") == 0o600
    (creds / "bearer_token").write_bytes(b"edited")
    sync.sync_once()
    assert (creds / "bearer_token").read_bytes() == b"tok\n"


def test_repairs_a_file_whose_group_was_changed(tmp_path):
    source = tmp_path / "plain"
    source.mkdir()
    (source / "bearer_token").write_bytes(b"tok\n")
    creds = tmp_path / "creds"
    sync = CredentialSync(source, creds, uid=NOBODY, gid=NOBODY)
    sync.sync_once()
    os.chown(creds / "bearer_token", NOBODY, 0)  # right owner, wrong group
    assert sync.sync_once() == ["bearer_token"]
    st = os.lstat(creds / "bearer_token")
    assert (st.st_uid, st.st_gid, mode(creds / "bearer_token")) == (NOBODY, NOBODY, 0o600)
    assert sync.sync_once() == []


def test_a_restarted_sync_removes_files_whose_key_is_gone(tmp_path):
    source = tmp_path / "plain"
    source.mkdir()
    (source / "bearer_token").write_bytes(b"tok\n")
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "stale").write_bytes(b"old token")
    CredentialSync(source, creds).sync_once()
    assert sorted(p.name for p in creds.iterdir()) == ["bearer_token"]


def test_bad_key_fails_clearly_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "plain"
    source.mkdir()
    (source / "bearer_token").write_bytes(b"tok\n")
    (source / "a____b").write_bytes(b"x")
    creds = tmp_path / "creds"
    assert main(["--from", str(source), "--to", str(creds), "--once"]) == 2
    assert "refusing Secret key 'a____b'" in capsys.readouterr().err
    assert not creds.exists()


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["--from", str(tmp_path / "nope"), "--to", str(tmp_path / "c"), "--once"]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["casa_session.credsync", "casa_spawner.credsync"])
def test_once_as_init_container(tmp_path, module):
    """The sidecar's module, and the name pod specs of sessions started before the move still carry."""
    secret = KubeletSecretVolume(tmp_path / "secret")
    secret.publish(BUNDLE)
    creds = tmp_path / "creds"
    done = subprocess.run(
        [sys.executable, "-m", module, "--from", str(secret.root), "--to", str(creds),
         "--uid", str(NOBODY), "--gid", str(NOBODY), "--once"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (creds / "condor/tokens.d/casa").read_bytes() == BUNDLE["condor__tokens.d__casa"]
    assert os.lstat(creds / "condor/tokens.d/casa").st_uid == NOBODY


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sidecar_follows_renewals_and_stops_on_sigterm(tmp_path):
    secret = KubeletSecretVolume(tmp_path / "secret")
    secret.publish(BUNDLE)
    creds = tmp_path / "creds"
    proc = subprocess.Popen(
        [sys.executable, "-m", "casa_session.credsync", "--from", str(secret.root), "--to", str(creds),
         "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        token = creds / "bearer_token"
        assert wait_for(lambda: token.exists() and token.read_bytes() == b"macaroon-1\n")
        secret.publish(dict(BUNDLE, bearer_token=b"macaroon-2\n"))
        assert wait_for(lambda: token.read_bytes() == b"macaroon-2\n")
        assert mode(token) == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
