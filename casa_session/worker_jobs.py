"""One Dask worker as one HTCondor job: its submit description and the files that travel with it (pure).

dask-jobqueue's ``HTCondorJob`` builds the description from dask config ``jobqueue.casa``
(cores, memory, disk, processes, python, death-timeout, local-directory, worker-extra-args,
job-extra-directives ...; defaults in ``casa.yaml``), exactly as ``HTCondorCluster`` would.
What it does not fit, casa adds as directives:

- no shared filesystem: the session's CA, the worker certificate and the bearer token are
  files spooled with the job and encrypted on the way (``encrypt_input_files``); the worker
  reads them from its sandbox by relative name;
- ``HTCondorJob`` puts the worker's command line into ``Arguments``, which every user of the
  pool can read in the job ad: so the command holds only the public scheduler address and
  sandbox file names, never a credential, and no ``Environment`` is set (a credential a
  worker needs is a file; ``BEARER_TOKEN_FILE`` names the spooled one);
- ``log-directory`` is refused (it is a path on the notebook's disk, which the schedd cannot
  write to);
- the job carries ``+CasaSession`` (the spawner removes a stopped session's jobs by it),
  ``+CasaCluster``, ``+CasaWorker`` and ``+DaskSchedulerAddress``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dask.config
import yaml

from casa_condor.submit import TRANSFER_KEYS, ad_attribute_keys, check_extra_directives, spooled_files, string_literal
from casa_hub.errors import ConfigurationError

CONFIG = "jobqueue.casa"
CA_FILE, WORKER_CERT, WORKER_KEY, BEARER_TOKEN = "ca.pem", "worker.pem", "worker-key.pem", "bearer_token"
SESSION_ATTR, CLUSTER_ATTR, WORKER_ATTR, ADDRESS_ATTR = "CasaSession", "CasaCluster", "CasaWorker", "DaskSchedulerAddress"
#: directives casa sets itself; ``job-extra-directives`` may not replace them
RESERVED = TRANSFER_KEYS | {"output", "error", "log"} | ad_attribute_keys(
    SESSION_ATTR, CLUSTER_ATTR, WORKER_ATTR, ADDRESS_ATTR, "DaskWorkerName")
UNIVERSES = ("vanilla", "container", "docker")


def load_defaults() -> None:
    """Register ``casa.yaml`` as dask config defaults (a user's or site's config still wins)."""
    with open(Path(__file__).with_name("casa.yaml")) as fh:
        dask.config.update_defaults(yaml.safe_load(fh))


load_defaults()


def casa_config(key: str):
    return dask.config.get(f"{CONFIG}.{key}")


@dataclass(frozen=True)
class WorkerTarget:
    """Where the job's worker connects and what it presents: all read from the session."""

    address: str  #: the public ``tls://<slug>.dask.<domain>:<port>`` (``+DaskSchedulerAddress``)
    connect_address: str  #: what the worker dials (the address itself, or an IP with the name as SNI)
    sni: str | None  #: sent as ``--scheduler-sni`` when ``connect_address`` is not the name
    ca_file: str
    worker_cert: str
    worker_key: str
    bearer_token_file: str | None = None


@dataclass(frozen=True)
class WorkerJob:
    """A submission ready for ``condor_submit -spool``: the description and every file it sends."""

    name: str
    description: str
    files: dict[str, bytes] = field(repr=False)

    def write(self, directory: str | os.PathLike) -> str:
        """Write the files (0600) and the description into ``directory``; the description's file name."""
        directory = Path(directory)
        for name, data in self.files.items():
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        (directory / "worker.sub").write_text(self.description)
        return "worker.sub"


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read the {what} {path}: {e.strerror}") from None


def worker_job(name: str, *, session: str, cluster: str, target: WorkerTarget) -> WorkerJob:
    """The job of Dask worker ``name`` of ``cluster`` in ``session``, sized by dask config ``jobqueue.casa``."""
    from dask_jobqueue.htcondor import HTCondorJob  # its import pulls in dask-jobqueue's whole config

    for what, value in (("session", session), ("cluster", cluster), ("worker name", name)):
        string_literal(value, what)
    if casa_config("log-directory"):
        raise ConfigurationError(f"{CONFIG}.log-directory cannot be used: workers run where the notebook's disk is not")
    processes = casa_config("processes") or 1
    if processes > 1 and target.sni:
        raise ConfigurationError(
            f"{CONFIG}.processes > 1 needs a nanny, which cannot send the scheduler's name ({target.sni}) as TLS SNI; "
            "ask for more jobs with processes: 1 instead")

    files = {CA_FILE: _read(target.ca_file, "session's Dask CA"), WORKER_CERT: _read(target.worker_cert, "worker certificate")}
    args = ["--tls-ca-file", CA_FILE, "--tls-cert", WORKER_CERT, "--no-dashboard"]
    if target.worker_key and os.path.realpath(target.worker_key) != os.path.realpath(target.worker_cert):
        files[WORKER_KEY] = _read(target.worker_key, "worker key")
        args += ["--tls-key", WORKER_KEY]
    else:
        args += ["--tls-key", WORKER_CERT]
    if target.sni:
        args += ["--scheduler-sni", target.sni]
    prologue = list(casa_config("job-script-prologue") or casa_config("env-extra") or [])
    if target.bearer_token_file and os.path.exists(target.bearer_token_file):
        files[BEARER_TOKEN] = _read(target.bearer_token_file, "bearer token")
        prologue.insert(0, f'export BEARER_TOKEN_FILE="$PWD/{BEARER_TOKEN}"')

    user = casa_config("job-extra-directives") or casa_config("job-extra") or {}
    directives = check_extra_directives(user, RESERVED, f"{CONFIG}.job-extra-directives")
    directives.update(_universe_directives())
    directives.update(spooled_files(files))
    directives.update({
        "transfer_executable": "false",
        "getenv": "false",
        "leave_in_queue": "false",
        "output": "worker.out",
        "error": "worker.err",
        "MY.DaskWorkerName": string_literal(name, "worker name"),
        f"+{SESSION_ATTR}": string_literal(session, "session"),
        f"+{CLUSTER_ATTR}": string_literal(cluster, "cluster"),
        f"+{WORKER_ATTR}": string_literal(name, "worker name"),
        f"+{ADDRESS_ATTR}": string_literal(target.address, "scheduler address"),
    })
    job = HTCondorJob(
        scheduler=target.connect_address, name=name, config_name="casa", nanny=processes > 1,
        worker_extra_args=list(casa_config("worker-extra-args") or casa_config("extra") or []) + args,
        job_extra_directives=directives, job_script_prologue=prologue,
    )
    return WorkerJob(name=name, description=job.job_script().lstrip("\n"), files=files)


def _universe_directives() -> dict[str, str]:
    image = casa_config("worker-image")
    universe = casa_config("universe") or ("container" if image else "vanilla")
    if universe not in UNIVERSES:
        raise ConfigurationError(f"{CONFIG}.universe must be one of {', '.join(UNIVERSES)}, not {universe!r}")
    if universe == "vanilla":
        if image:
            raise ConfigurationError(f"{CONFIG}.worker-image needs universe container or docker, not vanilla")
        return {"universe": "vanilla"}
    if not image or any(c in str(image) for c in ' "\n\r'):
        raise ConfigurationError(f"{CONFIG}.worker-image must name a container image for universe {universe}, not {image!r}")
    return {"universe": universe, f"{universe}_image": str(image)}
