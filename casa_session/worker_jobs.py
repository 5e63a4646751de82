"""One Dask worker as one HTCondor job: its submit description and the files that travel with it (pure).

dask-jobqueue's ``HTCondorJob`` builds the description from dask config ``jobqueue.casa``
(cores, memory, disk, processes, python, death-timeout, local-directory, worker-extra-args,
job-extra-directives ...; defaults in ``casa.yaml``), exactly as ``HTCondorCluster`` would.
What it does not fit, casa adds as directives:

- no shared filesystem: the session's CA, the worker certificate and the XCache's CA are
  files spooled with the job and encrypted on the way (``encrypt_input_files``); the worker
  reads them from its sandbox by relative name;
- the data token: with the facility's credd service (``CASA_DATA_TOKEN_SERVICE``) the job asks
  for it (``use_oauth_services``) and reads the starter's copy, refreshed while it runs; without
  one, the token is spooled once like the certificates and is never renewed in the job
  (:mod:`casa_condor.data_access`);
- ``HTCondorJob`` puts the worker's command line into ``Arguments``, which every user of the
  pool can read in the job ad: so the command holds only the public scheduler address, the
  XCache's address and sandbox file names, never a credential, and no ``Environment`` is set
  (a credential a worker needs is a file; ``BEARER_TOKEN_FILE`` names it);
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

from casa_condor.data_access import ADDRESS_VARIABLES, DataAccessError, WorkerDataAccess
from casa_condor.submit import TRANSFER_KEYS, ad_attribute_keys, check_extra_directives, spooled_files, string_literal
from casa_hub.errors import ConfigurationError
from casa_hub.plan import DATA_TOKEN_SERVICE_ENV

CONFIG = "jobqueue.casa"
CA_FILE, WORKER_CERT, WORKER_KEY = "ca.pem", "worker.pem", "worker-key.pem"
SESSION_ATTR, CLUSTER_ATTR, WORKER_ATTR, ADDRESS_ATTR = "CasaSession", "CasaCluster", "CasaWorker", "DaskSchedulerAddress"
#: directives casa sets itself; ``job-extra-directives`` may not replace them
RESERVED = TRANSFER_KEYS | {"output", "error", "log", "use_oauth_services"} | ad_attribute_keys(
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
    data: WorkerDataAccess = WorkerDataAccess()  #: what the worker needs to read through the XCache


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


def worker_data_access(env) -> WorkerDataAccess:
    """What the session's workers need to read data through the XCache, from the session's environment
    (:data:`casa_condor.data_access.WORKER_VARIABLES`, and ``CASA_DATA_TOKEN_SERVICE``): files are read now,
    so a worker started later carries the token of that moment."""
    addresses = {k: env[k] for k in ADDRESS_VARIABLES if env.get(k)}
    ca_file, token_file = env.get("XCACHE_CA_FILE"), env.get("BEARER_TOKEN_FILE")
    ca = _read(ca_file, "XCache's CA (XCACHE_CA_FILE)") if ca_file else None
    token = _read(token_file, "data token (BEARER_TOKEN_FILE)") if token_file and os.path.exists(token_file) else None
    service = (env.get(DATA_TOKEN_SERVICE_ENV) or "") if token is not None else ""
    try:
        return WorkerDataAccess(addresses=addresses, ca=ca, token=token, service=service)
    except DataAccessError as e:
        raise ConfigurationError(f"the session's data access cannot be given to its workers: {e}") from None


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
    files.update(target.data.files())
    prologue = target.data.export_lines() + list(casa_config("job-script-prologue") or casa_config("env-extra") or [])

    user = casa_config("job-extra-directives") or casa_config("job-extra") or {}
    directives = check_extra_directives(user, RESERVED, f"{CONFIG}.job-extra-directives")
    directives.update(_universe_directives())
    directives.update(spooled_files(files))
    directives.update(target.data.directives())
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
