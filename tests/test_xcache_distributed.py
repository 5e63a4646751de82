"""Dask workers read through the real XCache with their own token file, by ``root://`` and HTTPS.

A TLS scheduler as the spawner runs one, two ``CasaCluster`` workers as local processes given only
the worker variables (``XCACHE_HOST``, ``XCACHE_CA_FILE``, ``BEARER_TOKEN_FILE`` -- a file of the
workers' own, not the notebook's), and tasks that call ``uproot.open(url, **XCache().uproot_options())``
built in the notebook: the options travel pickled in the task, the token and the CA are the worker's.
The worker's token is replaced by a fresh one after the first reads and the old one expires before
the next; every fault in a task reaches ``client.gather``/``result`` as an ``XCacheError`` naming it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

import awkward as ak
import pytest
import uproot

from casa_session.cluster import CasaCluster, LocalProcessWorkers
from casa_session.xcache import WORKER_VARIABLES, XCache, XCacheError
from casa_session.xcache_token import token_facts
from casa_spawner.demo.events import EVENTS_NAME, write_events
from tests.dask_scheduler import tls_scheduler
from tests.xcache_site import XCacheSite

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EVENTS = f"/store/user/alice/{EVENTS_NAME}"
COLUMNS = ["Muon_pt", "Muon_charge"]


def read_columns(url: str, options: dict) -> tuple[dict, int]:
    """A task: the columns of the file at ``url``, read on the worker with ``options``; and the worker's pid."""
    with uproot.open(url, **options) as fh:
        arrays = fh["Events"].arrays(COLUMNS)
    return {c: ak.to_list(arrays[c]) for c in COLUMNS}, os.getpid()


async def test_workers_read_by_both_protocols_across_a_token_renewal(tmp_path, monkeypatch):
    events_file = write_events(tmp_path / EVENTS_NAME, n_events=2000, seed=21)
    direct = uproot.open(events_file)["Events"].arrays(COLUMNS)
    direct = {c: ak.to_list(direct[c]) for c in COLUMNS}
    site = await XCacheSite.start(tmp_path / "xcache", files={EVENTS: events_file})
    try:
        await asyncio.to_thread(_run, site, tmp_path, monkeypatch, direct)
    finally:
        await site.stop()


def _run(site: XCacheSite, tmp_path, monkeypatch, direct):
    worker_token = site.token_file("alice", "worker-token")
    issued = [open(worker_token).read().strip()]
    for name in (*WORKER_VARIABLES, "X509_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in site.env(worker_token, "root").items():  # what a launcher gives the workers, nothing more
        monkeypatch.setenv(name, value)
    # the notebook reads first: what root:// derives in its process (X509_CERT_DIR) is inherited by local workers
    assert ak.to_list(XCache().open_root(EVENTS)["Events"].arrays(COLUMNS)["Muon_pt"]) == direct["Muon_pt"]
    with tls_scheduler(tmp_path) as connection:
        cluster = CasaCluster(connection, LocalProcessWorkers(log_dir=tmp_path / "workers"), name_prefix="xc")
        try:
            cluster.scale(2)
            # the notebook has a token file of its own: the tasks must not need it
            monkeypatch.setenv("BEARER_TOKEN_FILE", site.token_file("alice", "notebook-token"))
            issued.append(open(os.environ["BEARER_TOKEN_FILE"]).read().strip())
            with cluster.get_client(timeout="30s") as client:
                client.wait_for_workers(2, timeout=120)
                xc = XCache()
                urls = {p: xc.url(EVENTS, p) for p in ("root", "https")}
                options = {p: xc.uproot_options(p) for p in urls}

                def read_everywhere(protocol: str) -> set[int]:
                    futures = client.map(read_columns, [urls[protocol]] * 6, options=options[protocol], pure=False)
                    results = client.gather(futures)
                    assert all(columns == direct for columns, _ in results), protocol
                    return {pid for _, pid in results}

                short = site.token_file("alice", "worker-token", lifetime=10)  # the workers' token, rewritten in place
                issued.append(open(short).read().strip())
                expires = token_facts(issued[-1]).expires
                first = read_everywhere("root") | read_everywhere("https")
                issued.append(open(site.token_file("alice", "worker-token")).read().strip())  # renewed, as the hub or credd does
                time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.5)
                later = read_everywhere("root") | read_everywhere("https")  # the first token has expired
                assert later <= first and len(first) == 2  # the same two workers, with the fresh token

                faults = [  # (what the worker's token file holds, the cause the user sees)
                    (site.token("bob"), "the token is bob's and covers /store/user/bob/, not " + EVENTS),
                    (site.token("alice", lifetime=1), "expired at"),
                    (None, "does not exist"),
                ]
                for content, cause in faults:
                    if content is None:
                        os.remove(worker_token)
                    else:
                        issued.append(content)
                        with open(worker_token + ".new", "w") as fh:
                            fh.write(content + "\n")
                        os.chmod(worker_token + ".new", 0o600)
                        os.replace(worker_token + ".new", worker_token)
                        time.sleep(1.5 if "expired" in cause else 0)
                    for protocol in urls:
                        future = client.submit(read_columns, urls[protocol], options[protocol], pure=False)
                        with pytest.raises(XCacheError, match=cause) as err:
                            future.result(timeout=90)
                        assert content is None or content not in str(err.value)
        finally:
            cluster.close()
    logs = site.logs() + "".join(p.read_text(errors="replace") for p in (tmp_path / "workers").glob("*.log"))
    assert "Registered to" in logs
    for token in issued:  # neither XRootD's logs nor the workers' hold a token
        assert token[:40] not in logs
