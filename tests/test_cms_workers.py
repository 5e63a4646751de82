"""config/cms's workers: the notebook's DASK_JOBQUEUE__CASA__* variables make the slides' docker-universe job,
as dask reads them in the notebook and as HTCondor's own submit parser (htcondor2.Submit) reads the description."""

from __future__ import annotations

import dask.config
import htcondor2

from casa_session.worker_jobs import WorkerTarget, worker_job
from casa_spawner.kube import CasaKubeSpawner
from tests.secret_files import write_secret_file
from tests.test_kube_config import load_config


async def test_cms_workers_are_docker_universe_jobs_with_the_dask_port_published(tmp_path):
    env = CasaKubeSpawner(config=load_config("cms"), _mock=True).environment
    for name in ("ca.pem", "worker.pem"):
        write_secret_file(tmp_path / name, b"x\n")
    target = WorkerTarget(address="tls://alice.dask.coffea.casa:8786", connect_address="tls://alice.dask.coffea.casa:8786",
                          sni=None, ca_file=str(tmp_path / "ca.pem"), worker_cert=str(tmp_path / "worker.pem"),
                          worker_key=str(tmp_path / "worker.pem"))
    casa = dask.config.collect_env(env)["jobqueue"]["casa"]  # as the notebook's dask reads its environment
    with dask.config.set({f"jobqueue.casa.{key}": value for key, value in casa.items()}):
        job = worker_job("casa-ab12-0", session="alice-0123456789ab", cluster="casa-ab12", target=target)
    sub = {k.lower(): v for k, v in dict(htcondor2.Submit(job.description)).items()}
    assert sub["universe"] == "docker" and sub["docker_image"] == "coffeateam/coffea-casa-analysis:latest"
    assert sub["container_service_names"] == "dask" and sub["dask_container_port"] == "8786"
    assert sub["my.daskworkercores"] == "2" and sub["my.daskworkermemory"] == str(6 * 2**30)
    assert sub["my.casasession"] == '"alice-0123456789ab"'
    assert "python3 -m distributed.cli.dask_worker" in sub["arguments"] and "--death-timeout 60" in sub["arguments"]
