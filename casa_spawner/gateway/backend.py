"""``HTCondorBackend``: dask-gateway's clusters as HTCondor jobs, each user's under their own identity.

Like dask-gateway's PBS and Slurm backends (a ``JobQueueBackend``), the scheduler and each worker
are batch jobs; unlike them, nothing needs a shared filesystem or ``sudo``: the gateway issues
the user an IDTOKEN from casa_hub's ``Facility`` (``c.Facility.*`` in the gateway's config), and
submits with ``condor_submit -spool`` so the cluster's TLS credentials travel with the job,
encrypted.  A job that left the queue counts as finished; a held job is removed and its cluster
or worker fails with the hold reason, which reaches the user waiting in ``Gateway.new_cluster()``.

Workers read data through the XCache with the user's own data token, issued by the gateway
(:mod:`.data_tokens`) and kept fresh in running workers by the pool's credd when the facility
names a service (``c.Facility.data_token_service``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from aiohttp import web
from dask_gateway_server import models
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.backends.jobqueue.base import JobQueueBackend, JobQueueClusterConfig
from dask_gateway_server.traitlets import MemoryLimit
from dask_gateway_server.utils import timestamp
from traitlets import Dict, Float, Instance, Int, List, Unicode, default, validate

from casa_condor.data_access import WorkerDataAccess
from casa_condor.output import IDLE, RUNNING, CondorError, CondorOutputError, one_line, parse_submit_output
from casa_condor.schedd import CondorTools, UserSchedd
from casa_hub.errors import ConfigurationError
from casa_hub.facility import Facility
from casa_hub.files import private_temp_dir

from ..condor_user import tool_on_path
from . import jobs
from .data_tokens import UserDataTokens
from .identity import UserTokens
from .options import RESERVED_ENV_PREFIXES, check_user_environment, cluster_options

SUBMIT_FILE = "job.sub"


class HTCondorClusterConfig(JobQueueClusterConfig):
    """One cluster's settings: the parent's cores, memory, commands and setup, plus image and extras."""

    image = Unicode(
        "",
        config=True,
        help="""Container image the scheduler and workers run in (``container_image`` of the jobs);
        empty: the execute node's own environment.  Users choose among ``HTCondorBackend.worker_images``.

        Example: ``"/cvmfs/unpacked.cern.ch/registry.hub.docker.com/coffeateam/coffea-dask:latest"``.
        """,
    )
    user_environment = Dict(
        config=False,
        help="""Environment variables the user asked for (the ``environment`` cluster option), laid over
        ``environment``; names reserved for the gateway are refused.""",
    )
    job_extra_directives = Dict(
        config=True,
        help="""Extra submit commands for every job of the cluster, as in dask-jobqueue's HTCondorCluster.

        Example: ``{"+AccountingGroup": '"cms.dask"', "requirements": 'OpSysMajorVer == 9'}``.
        Commands the backend sets itself (executable, environment, transfer of files, ...) are refused.
        """,
    )

    @default("scheduler_cmd")
    def _default_scheduler_cmd(self):
        return ["dask", "scheduler"]  # distributed >= 2023 has no dask-scheduler script

    @default("worker_cmd")
    def _default_worker_cmd(self):
        return ["dask", "worker"]

    @validate("user_environment")
    def _validate_user_environment(self, proposal):
        return check_user_environment(proposal["value"])

    @validate("job_extra_directives")
    def _validate_extra(self, proposal):
        try:
            return jobs.check_extra_directives(proposal["value"])
        except ConfigurationError as e:
            raise ValueError(str(e)) from None


class FailedClusterReport(models.Cluster):
    """A failed cluster as its owner sees it while waiting for it to start (``GET ...?wait``).

    The gateway's routes check the user's permission on the model, then serialise it; this
    model answers that with HTTP 409 and the reason, which dask-gateway's client raises as
    ``GatewayClusterError`` from ``new_cluster()`` / ``connect()`` -- instead of "see logs".
    """

    def __init__(self, model: models.Cluster, reason: str):
        super().__init__(**{k: getattr(model, k) for k in (
            "name", "username", "token", "options", "config", "status", "scheduler_address",
            "dashboard_address", "api_address", "tls_cert", "tls_key", "start_time", "stop_time")})
        self.reason = reason

    def to_dict(self, full=True):
        raise web.HTTPConflict(reason=f"Cluster {self.name} failed: {self.reason}")


class HTCondorBackend(JobQueueBackend):
    """A dask-gateway backend that runs each cluster's scheduler and workers as HTCondor jobs.

    ``c.DaskGateway.backend_class = "casa_spawner.gateway.HTCondorBackend"``; the pool and the
    users' identities come from ``c.Facility`` (``signing_key_file``, ``trust_domain``,
    ``collector_host``, ``schedd_host``, ``condor_identity``, ...).
    """

    supports_bulk_shutdown = True  # one condor_rm -constraint removes a cluster's every job

    facility = Instance(Facility, help="The facility configuration (``c.Facility``): the pool and its identities.")

    @default("facility")
    def _default_facility(self):
        return Facility.instance(config=self.config)

    @default("cluster_config_class")
    def _default_cluster_config_class(self):
        return HTCondorClusterConfig

    @default("submit_command")
    def _default_submit_command(self):
        return shutil.which("condor_submit") or "condor_submit"

    @default("cancel_command")
    def _default_cancel_command(self):
        return shutil.which("condor_rm") or "condor_rm"

    @default("status_command")
    def _default_status_command(self):
        return shutil.which("condor_q") or "condor_q"

    history_command = Unicode(config=True, help="The path to ``condor_history`` (how a job that left the queue ended).")

    @default("history_command")
    def _default_history_command(self):
        return shutil.which("condor_history") or "condor_history"

    reschedule_command = Unicode(
        config=True,
        help="""The path to ``condor_reschedule`` (asks the schedd to advertise a job once its spooled input has
        arrived, so its match need not wait for the schedd's next update).  Empty: not used.""",
    )

    @default("reschedule_command")
    def _default_reschedule_command(self):
        return shutil.which("condor_reschedule") or ""

    store_cred_command = Unicode(
        config=True,
        help="""The path to ``condor_store_cred`` (gives the credd the users' data tokens; ``/usr/sbin`` in
        HTCondor's packages).  Only used with ``c.Facility.data_token_service``.""",
    )

    @default("store_cred_command")
    def _default_store_cred_command(self):
        return tool_on_path("condor_store_cred")

    xcache_ca_file = Unicode(
        "",
        config=True,
        help="""A PEM file of the CA that verifies the XCache (``c.Facility.xcache_host``), sent with every
        worker job (public, not secret) and given to it as ``XCACHE_CA_FILE``.  Empty: the workers' own
        CAs (a site XCache's grid certificate is trusted by the worker image).

        Example: ``c.HTCondorBackend.xcache_ca_file = "/etc/grid-security/certificates/xcache-ca.pem"``""",
    )
    data_token_check_period = Float(
        60.0,
        config=True,
        help="""Seconds between two renewals checks of the data tokens of users with running clusters: a
        token past ``c.Facility.renew_fraction`` of its life is re-issued and given to the credd, which
        hands it to the running workers.  Keep it well below the token's remaining life after renewal.""",
    )

    condor_config = Unicode(
        config=True,
        help="""``CONDOR_CONFIG`` for HTCondor's tools.  Default: the gateway's own ``CONDOR_CONFIG``
        (unset: the tools' usual search, e.g. ``/etc/condor/condor_config``).  ``"ONLY_ENV"``: no
        file; the pool comes from ``c.Facility.collector_host`` / ``schedd_host`` alone.""",
    )

    @default("condor_config")
    def _default_condor_config(self):
        return os.environ.get("CONDOR_CONFIG", "")

    condor_timeout = Float(
        30.0,
        config=True,
        help="""Seconds one HTCondor tool call may take; after that it is killed and the schedd counts
        as unreachable.  Keep it below ``cluster_start_timeout`` and ``worker_start_timeout``.""",
    )

    token_directory = Unicode(
        "",
        config=True,
        help="""Where the users' IDTOKENs are kept on the gateway host (a private 0700 directory,
        deleted when the gateway stops).  Empty: a fresh temporary directory.""",
    )

    default_host = Unicode(
        "0.0.0.0",
        config=True,
        help="""Address the scheduler and workers listen on inside their jobs.  ``0.0.0.0`` (every
        interface of the execute node) on a pool; ``127.0.0.1`` when the pool is this one machine.""",
    )

    max_worker_cores = Int(4, min=1, config=True, help="Most cores a user may ask for per worker (cluster option ``worker_cores``).")
    max_worker_memory = MemoryLimit(
        "16 G", config=True, help="Most memory a user may ask for per worker (cluster option ``worker_memory``, in GiB)."
    )
    worker_images = Dict(
        Unicode(),
        config=True,
        help="""Images users may choose (cluster option ``image``), label -> image; the first is the default.
        Empty: no choice, ``HTCondorClusterConfig.image`` applies.

        Example: ``{"coffea": "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/coffeateam/coffea-dask:latest"}``.
        """,
    )
    allowed_environment = List(
        Unicode(),
        ["*"],
        config=True,
        help=f"""Environment variables users may set (cluster option ``environment``), as glob patterns,
        e.g. ``["OMP_*", "MY_ANALYSIS_*"]``.  Names starting with {", ".join(RESERVED_ENV_PREFIXES)} are always
        refused.  ``[]``: no environment option.  Values travel in the encrypted job script, not the job ad.""",
    )

    @default("cluster_options")
    def _default_cluster_options(self):
        return cluster_options(max_cores=self.max_worker_cores, max_memory=self.max_worker_memory,
                               images=self.worker_images, allowed_environment=self.allowed_environment)

    # -- setup ----------------------------------------------------------------

    async def do_setup(self):
        if not self.facility.issues_condor_tokens:
            raise ConfigurationError(
                "HTCondorBackend submits as each user's own HTCondor identity: set c.Facility.signing_key_file "
                "(and c.Facility.trust_domain) in the gateway's configuration"
            )
        await asyncio.to_thread(self.facility.load_secrets)
        self.tokens = UserTokens(self.facility, self.token_directory or None)
        self.data_tokens = UserDataTokens(self.facility, self.log)
        self.xcache_ca = await asyncio.to_thread(self._read_xcache_ca)
        self.tools = self.condor_tools()
        self.task_pool.spawn(self._check_restored_clusters())
        if not self.data_tokens.enabled:
            self.log.info("Workers get no data token: the gateway has no c.Facility.macaroon_secret_file to issue one")
        elif self.data_tokens.renewed_in_jobs:
            self.task_pool.spawn(self._renew_data_tokens())
        else:
            self.log.warning("The users' data tokens travel once with each worker job and are not renewed in running "
                             "workers (set c.Facility.data_token_service, with a credd in the pool, to renew them)")

    def _read_xcache_ca(self) -> bytes | None:
        if not self.xcache_ca_file:
            return None
        try:
            with open(self.xcache_ca_file, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise ConfigurationError(f"c.HTCondorBackend.xcache_ca_file {self.xcache_ca_file}: {e.strerror}") from None

    async def do_cleanup(self):
        tokens = getattr(self, "tokens", None)
        if tokens is not None:
            await tokens.close()
        if getattr(self, "data_tokens", None) is not None:
            self.data_tokens.forget()

    def condor_tools(self) -> CondorTools:
        env = {"_CONDOR_TRUST_DOMAIN": self.facility.trust_domain}
        if self.condor_config:
            env["CONDOR_CONFIG"] = self.condor_config
        if self.facility.collector_host:
            env["_CONDOR_COLLECTOR_HOST"] = self.facility.collector_host
        if self.facility.schedd_host:
            env["_CONDOR_SCHEDD_HOST"] = self.facility.schedd_host
        if self.facility.credd_host:
            env["_CONDOR_CREDD_HOST"] = self.facility.credd_host
        return CondorTools(submit=self.submit_command, remove=self.cancel_command, query=self.status_command,
                           history=self.history_command, environment=env, schedd_name=self.facility.schedd_host,
                           timeout=self.condor_timeout, store_cred=self.store_cred_command, reschedule=self.reschedule_command)

    async def schedd_for(self, username: str) -> UserSchedd:
        """The schedd as ``username``'s own HTCondor identity."""
        return UserSchedd(self.tools, self.tokens.identity(username), await self.tokens.directory(username))

    # -- the jobs ---------------------------------------------------------------

    def get_tls_paths(self, cluster):
        """The credentials sit in the job's scratch directory, where HTCondor put them."""
        return jobs.TLS_CERT, jobs.TLS_KEY

    def get_env(self, cluster):
        env = super().get_env(cluster)
        env.update(cluster.config.get("user_environment") or {})  # never a reserved name: validated
        env["DASK_GATEWAY_API_TOKEN"] = f"./{jobs.API_TOKEN}"  # a path: the scheduler reads the token from it
        return env

    def get_worker_env(self, cluster):
        env = super().get_worker_env(cluster)
        env.pop("DASK_GATEWAY_API_TOKEN", None)  # only the scheduler talks to the gateway
        return env

    def get_worker_command(self, cluster, worker_name, scheduler_address=None):
        command = super().get_worker_command(cluster, worker_name, scheduler_address)
        if self.default_host not in ("", "0.0.0.0"):
            command += ["--host", self.default_host]
        return command

    def _job(self, cluster, role: str, worker=None, data: WorkerDataAccess | None = None) -> jobs.GatewayJob:
        config = cluster.config
        tls = {jobs.TLS_CERT: cluster.tls_cert, jobs.TLS_KEY: cluster.tls_key}
        data = data or WorkerDataAccess()
        if role == jobs.SCHEDULER:
            command, env, setup = self.get_scheduler_command(cluster), self.get_scheduler_env(cluster), config.scheduler_setup
            files = {**tls, jobs.API_TOKEN: cluster.token.encode()}
            cores, memory = config.scheduler_cores, config.scheduler_memory
        else:
            command, env, setup = self.get_worker_command(cluster, worker.name), self.get_worker_env(cluster), config.worker_setup
            files, cores, memory = {**tls, **data.files()}, config.worker_cores, config.worker_memory
        files[jobs.JOB_SCRIPT] = jobs.job_script(command, env, setup, exports=data.export_lines("$job_dir")).encode()
        return jobs.GatewayJob(
            cluster_name=cluster.name, role=role, worker_name=worker.name if worker else "", cores=cores,
            memory=memory, files=files, image=config.get("image", ""),
            extra_directives=config.get("job_extra_directives") or {}, backend_directives=data.directives(),
        )

    def scheduler_job(self, cluster) -> jobs.GatewayJob:
        return self._job(cluster, jobs.SCHEDULER)

    def worker_job(self, worker, data: WorkerDataAccess | None = None) -> jobs.GatewayJob:
        """A worker's job; ``data``: what it needs to read through the XCache (:meth:`worker_data`)."""
        return self._job(worker.cluster, jobs.WORKER, worker, data)

    async def worker_data(self, username: str) -> WorkerDataAccess:
        """The XCache's address and CA, and the user's data token: in the credd (given to it now, as the
        user, if it has not got the current one) or, without a credd service, travelling with the job."""
        addresses = {name: value for name, value in (("XCACHE_HOST", self.facility.xcache_host),
                                                     ("XCACHE_HTTPS_HOST", self.facility.xcache_https_host)) if value}
        token = await self.data_tokens.current(username)
        if token is not None and self.data_tokens.renewed_in_jobs:
            await self.data_tokens.store(username, await self.schedd_for(username))  # condor_submit says if it failed
        return WorkerDataAccess(addresses=addresses, ca=self.xcache_ca, token=token.content if token else None,
                                service=self.facility.data_token_service if self.data_tokens.renewed_in_jobs else "")

    async def _renew_data_tokens(self) -> None:
        """Every ``data_token_check_period``: the data tokens of users with clusters, renewed when due and given
        to the credd, which hands them to the running workers.  A failure is logged; the next round retries."""
        while True:
            await asyncio.sleep(self.data_token_check_period)
            for username in sorted({c.username for c in self.db.active_clusters()}):
                try:
                    await self.data_tokens.store(username, await self.schedd_for(username))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.exception("Renewing the data token of %s failed", username)

    @staticmethod
    def _write_job(job: jobs.GatewayJob) -> Path:
        """A private directory with the job's files and submit description (blocking: run in a thread)."""
        return private_temp_dir("casa-gateway-job-", {**job.files, SUBMIT_FILE: job.submit_description().encode()})

    async def submit_job(self, username: str, job: jobs.GatewayJob) -> str:
        """Submit ``job`` as ``username``; its files are spooled to the schedd, then deleted here."""
        schedd = await self.schedd_for(username)
        directory = await asyncio.to_thread(self._write_job, job)
        try:
            job_id = await schedd.submit(directory, SUBMIT_FILE)
            self.task_pool.spawn(schedd.reschedule_when_spooled([job_id]))  # best effort: the match comes sooner
            return job_id
        except CondorOutputError:
            # the schedd answered, but not with one job id: leave nothing of this job behind
            await self._remove_quietly(schedd, job.constraint)
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _remove_quietly(self, schedd: UserSchedd, constraint: str) -> None:
        try:
            await schedd.remove(constraint)
        except CondorError as e:
            self.log.warning("Could not remove jobs (%s) as %s: %s", constraint, schedd.identity, e)

    # -- the JobQueueBackend contract -------------------------------------------

    def parse_job_id(self, stdout):
        return parse_submit_output(stdout)

    async def do_start_cluster(self, cluster):
        try:
            job_id = await self.submit_job(cluster.username, self.scheduler_job(cluster))
        except CondorError as e:
            yield {"failure": one_line(f"the scheduler job could not be submitted: {e}")}
            raise
        self.log.info("Job %s submitted for cluster %s (user %s)", job_id, cluster.name, cluster.username)
        yield {"job_id": job_id}

    async def do_stop_cluster(self, cluster):
        schedd = await self.schedd_for(cluster.username)
        if cluster.target == JobStatus.FAILED and not cluster.state.get("failure"):
            reason = await self._why_failed(schedd, cluster)
            if reason:
                self._record_failure(cluster, reason)
        await schedd.remove(jobs.cluster_constraint(cluster.name))

    async def do_start_worker(self, worker):
        try:
            data = await self.worker_data(worker.cluster.username)
            job_id = await self.submit_job(worker.cluster.username, self.worker_job(worker, data))
        except CondorError as e:
            reason = one_line(f"a worker job could not be submitted: {e}")
            self._record_failure(worker.cluster, reason, key="last_worker_failure")
            yield {"failure": reason}
            raise
        self.log.info("Job %s submitted for worker %s", job_id, worker.name)
        yield {"job_id": job_id}

    async def do_stop_worker(self, worker):
        schedd = await self.schedd_for(worker.cluster.username)
        await schedd.remove(jobs.worker_constraint(worker.name))

    async def _do_check(self, objs):
        """For each cluster or worker: is its job still (or about to be) running?  A job that left
        the queue, or is held, is not; the reason is kept for the user."""
        by_user: dict[str, list] = {}
        for obj in objs:
            if obj.state.get("job_id"):
                by_user.setdefault(self._username(obj), []).append(obj)
        alive: dict[str, bool] = {}

        async def check(username, items):
            schedd = await self.schedd_for(username)
            states = await schedd.query(o.state["job_id"] for o in items)
            for obj in items:
                job_id = obj.state["job_id"]
                state = states.get(job_id)
                alive[obj.name] = state is not None and state.alive
                if not alive[obj.name]:
                    reason = await schedd.why_not_running(job_id, self._role(obj), state)
                    self.log.info("%s", reason)
                    self._record_obj_failure(obj, reason)

        await asyncio.gather(*(check(u, items) for u, items in by_user.items()))
        return [alive.get(obj.name, False) for obj in objs]

    # -- why a job failed ---------------------------------------------------------

    @staticmethod
    def _username(obj) -> str:
        return getattr(obj, "username", None) or obj.cluster.username

    @staticmethod
    def _role(obj) -> str:
        return jobs.SCHEDULER if hasattr(obj, "workers") else jobs.WORKER

    async def _why_failed(self, schedd: UserSchedd, cluster) -> str | None:
        """The reason a cluster the gateway gave up on failed, from its scheduler job as the schedd sees it."""
        if cluster.state.get("last_worker_failure") and cluster.worker_start_failure_count >= self.worker_start_failure_limit:
            return f"{cluster.worker_start_failure_count} workers failed to start; the last: {cluster.state['last_worker_failure']}"
        job_id = cluster.state.get("job_id")
        if not job_id:
            return None
        try:
            state = (await schedd.query([job_id])).get(job_id)
            waited = (timestamp() - cluster.start_time) / 1000
            if state is not None and state.status == IDLE and waited >= self.cluster_start_timeout:
                return one_line(f"the scheduler job {job_id} was still waiting for a slot in the pool after "
                                f"{self.cluster_start_timeout:g}s (cluster_start_timeout)")
            if state is not None and state.status in (IDLE, RUNNING):
                return None  # e.g. the gateway stopping, or a scheduler not reporting to it: the gateway's log says
            return await schedd.why_not_running(job_id, jobs.SCHEDULER, state)
        except CondorError as e:
            self.log.warning("Could not tell why cluster %s failed: %s", cluster.name, e)
            return None

    def _record_obj_failure(self, obj, reason: str) -> None:
        if self._role(obj) == jobs.SCHEDULER:
            self._record_failure(obj, reason)
        else:
            self.db.update_worker(obj, state={**obj.state, "failure": reason})
            self._record_failure(obj.cluster, reason, key="last_worker_failure")

    def _record_failure(self, cluster, reason: str, key: str = "failure") -> None:
        self.db.update_cluster(cluster, state={**cluster.state, key: one_line(reason)})

    async def get_cluster(self, cluster_name, wait=False):
        model = await super().get_cluster(cluster_name, wait=wait)
        if wait and model is not None and model.status == models.ClusterStatus.FAILED:
            reason = self.db.get_cluster(cluster_name).state.get("failure")
            if reason:
                return FailedClusterReport(model, reason)
        return model

    # -- after a restart ------------------------------------------------------------

    async def _check_restored_clusters(self):
        """Clusters the database says are up whose scheduler job is gone fail now, with the reason
        (rather than after a heartbeat timeout)."""
        restored = [c for c in self.db.active_clusters()
                    if c.status in (JobStatus.SUBMITTED, JobStatus.RUNNING) and c.state.get("job_id")]
        if not restored:
            return
        try:
            statuses = await self._do_check(restored)
        except asyncio.CancelledError:
            raise
        except CondorError as e:
            self.log.warning("Could not check the %d restored clusters against the schedd: %s", len(restored), e)
            return
        except Exception:
            self.log.exception("Checking the restored clusters failed")
            return
        for cluster, ok in zip(restored, statuses):
            if ok:
                self.log.info("Cluster %s of user %s found running again", cluster.name, cluster.username)
            else:
                self.log.warning("Cluster %s of user %s failed while the gateway was away: %s",
                                 cluster.name, cluster.username, cluster.state.get("failure"))
                await self.stop_cluster(cluster.name, failed=True)
