"""Pure builders of a dask-gateway cluster's HTCondor jobs: the job script, its files, the submit description.

There is no shared filesystem: everything a job needs -- the gateway's per-cluster TLS
certificate and key, the scheduler's API token, and a job script holding the command and
its environment -- is a file spooled to the schedd at submission (``condor_submit -spool``)
and sent to the execute node encrypted (``encrypt_input_files``).  The job ad, which every
user of the pool can read with ``condor_q -l``, holds only resources and names: no
environment, no command line, no credential.  (dask-jobqueue's ``HTCondorJob`` puts both the
command and the environment into the description, hence into the ad: not used here.)
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from casa_condor import submit
from casa_condor.submit import TRANSFER_KEYS, ad_attribute_keys

SCHEDULER, WORKER = "scheduler", "worker"
TLS_CERT, TLS_KEY, API_TOKEN, JOB_SCRIPT = "dask.crt", "dask.pem", "api-token", "dask-gateway-job.sh"

#: job ad attributes that name a job's cluster, role and worker (``condor_q -constraint``)
CLUSTER_ATTR, ROLE_ATTR, WORKER_ATTR = "DaskGatewayCluster", "DaskGatewayRole", "DaskGatewayWorker"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: submit commands the backend owns: an operator's extra directives may not replace them, so
#: nothing can put the environment or a credential into the job ad, or keep jobs in the queue
RESERVED_SUBMIT_KEYS = TRANSFER_KEYS | {"request_cpus", "request_memory", "use_oauth_services"} | ad_attribute_keys(
    CLUSTER_ATTR, ROLE_ATTR, WORKER_ATTR)


def memory_mib(nbytes: int) -> int:
    """``request_memory`` in MiB for a memory limit in bytes (rounded up, at least 1)."""
    return max(1, math.ceil(int(nbytes) / 2**20))


def check_job_name(name: str, what: str) -> str:
    if not _JOB_NAME.match(name or ""):
        raise ValueError(f"{what} {name!r} cannot name an HTCondor job (letters, digits, '_' and '-')")
    return name


def check_environment(env: Mapping[str, str], what: str = "environment") -> dict[str, str]:
    """``env`` as str -> str if every name is a shell variable name and no value holds a NUL byte."""
    out = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"{what}: {name!r} is not an environment variable name")
        value = str(value)
        if "\0" in value:
            raise ValueError(f"{what}: the value of {name} holds a NUL byte")
        out[name] = value
    return out


def check_extra_directives(directives: Mapping[str, str]) -> dict[str, str]:
    """Operator's extra submit commands, refused where they would replace what the backend sets."""
    return submit.check_extra_directives(directives, RESERVED_SUBMIT_KEYS, "job_extra_directives", owner="the HTCondor backend")


def job_script(command: Sequence[str], environment: Mapping[str, str], setup: str = "", exports: Sequence[str] = ()) -> str:
    """The ``/bin/sh`` script a job runs: export the environment, run the site's setup, exec the command.

    Every value is single-quoted for the shell, so any character (spaces, quotes, ``$``) arrives as given;
    ``exports`` are ready ``export`` lines of paths in the sandbox (``"$job_dir/..."``, ``"$_CONDOR_CREDS/..."``:
    :meth:`casa_condor.data_access.WorkerDataAccess.export_lines`).
    """
    env = check_environment(environment)
    lines = [
        "#!/bin/sh",
        "# a dask-gateway job, written by casa_spawner.gateway",
        'job_dir="$(pwd)"',
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())),
        *exports,
    ]
    if setup.strip():
        lines += ["# the operator's setup (scheduler_setup / worker_setup)", setup.rstrip("\n")]
    lines += ['cd "$job_dir"', "exec " + shlex.join(command), ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class GatewayJob:
    """One scheduler or worker job of a cluster, ready to be written out and submitted."""

    cluster_name: str
    role: str  #: :data:`SCHEDULER` or :data:`WORKER`
    worker_name: str  #: empty for the scheduler
    cores: int
    memory: int  #: bytes
    files: Mapping[str, bytes] = field(repr=False)  #: every file the job needs, by name (all encrypted)
    image: str = ""
    extra_directives: Mapping[str, str] = field(default_factory=dict)
    #: the backend's own directives beyond files and resources (``use_oauth_services``), never the operator's
    backend_directives: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        check_job_name(self.cluster_name, "cluster name")
        if self.role not in (SCHEDULER, WORKER):
            raise ValueError(f"unknown job role {self.role!r}")
        if (self.role == WORKER) != bool(self.worker_name):
            raise ValueError("a worker job needs a worker name; a scheduler job has none")
        if self.worker_name:
            check_job_name(self.worker_name, "worker name")
        if JOB_SCRIPT not in self.files:
            raise ValueError(f"a job needs its script {JOB_SCRIPT}")
        for name in self.files:
            if "/" in name or "," in name or not name.strip() or name.startswith("."):
                raise ValueError(f"job file name {name!r} must be a plain file name")

    @property
    def constraint(self) -> str:
        """A ClassAd constraint matching this job (the worker) or every job of the cluster (the scheduler)."""
        if self.role == WORKER:
            return worker_constraint(self.worker_name)
        return cluster_constraint(self.cluster_name)

    def submit_description(self) -> str:
        """The submit description (``condor_submit`` input); every file travels with ``-spool``, encrypted."""
        tag = self.worker_name or self.cluster_name
        lines = [
            f"universe = {'container' if self.image else 'vanilla'}",
            "executable = /bin/sh",
            "transfer_executable = false",
            f"arguments = {JOB_SCRIPT}",  # a plain file name: nothing to quote
            "getenv = false",
            *(f"{k} = {v}" for k, v in submit.spooled_files(self.files).items()),
            "leave_in_queue = false",
            f"request_cpus = {int(self.cores)}",
            f"request_memory = {memory_mib(self.memory)}",
            f"batch_name = dask-gateway-{self.role}-{tag[:12]}",
            f'+{CLUSTER_ATTR} = "{self.cluster_name}"',
            f'+{ROLE_ATTR} = "{self.role}"',
        ]
        if self.worker_name:
            lines.append(f'+{WORKER_ATTR} = "{self.worker_name}"')
        if self.image:
            if "\n" in self.image or '"' in self.image:
                raise ValueError(f"image {self.image!r} cannot be a container image reference")
            lines.append(f"container_image = {self.image}")
        lines += [f"{k} = {v}" for k, v in self.backend_directives.items()]
        lines += [f"{k} = {v}" for k, v in check_extra_directives(self.extra_directives).items()]
        lines.append("queue")
        return "\n".join(lines) + "\n"


def cluster_constraint(cluster_name: str) -> str:
    return f'{CLUSTER_ATTR} == "{check_job_name(cluster_name, "cluster name")}"'


def worker_constraint(worker_name: str) -> str:
    return f'{WORKER_ATTR} == "{check_job_name(worker_name, "worker name")}"'
