"""The schedd as one user sees it: submit, remove, query and history through HTCondor's tools.

Every call is one tool process whose environment carries exactly one user's IDTOKEN and the
pool's addresses (nothing of the gateway's own environment but ``PATH`` and ``CONDOR_CONFIG``),
so identities never mix inside one process, and each call is bounded: a tool that does not
answer within ``timeout`` is killed and reported as an unreachable schedd.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .output import (
    JOB_ATTRIBUTES,
    CondorError,
    JobState,
    classify_failure,
    nothing_to_remove,
    one_line,
    parse_job_ads,
    parse_submit_output,
    store_cred_failure,
    store_cred_succeeded,
)

#: jobs ``condor_history`` may scan backwards for one answer (it reads the schedd's history file)
HISTORY_SCAN_LIMIT = 20000
#: seconds the schedd sleeps after receiving a job's spooled files, before it releases the job (schedd.cpp)
SPOOL_NAP = 1.0


@dataclass(frozen=True)
class CondorTools:
    """Where the tools are, what every call gets in its environment, and how long a call may take."""

    submit: str
    remove: str
    query: str
    history: str
    environment: Mapping[str, str] = field(default_factory=dict)  #: ``CONDOR_CONFIG``, ``_CONDOR_COLLECTOR_HOST``, ...
    schedd_name: str = ""  #: passed as ``-name`` where a tool would otherwise read a local file
    timeout: float = 30.0
    store_cred: str = "condor_store_cred"  #: stores a user's token in the credd (in ``sbin`` of HTCondor's packages)
    reschedule: str = ""  #: ``condor_reschedule``; "" where there is none (the schedd's own timer then advertises new jobs)

    async def run(self, argv: list[str], env: Mapping[str, str], cwd: str | os.PathLike | None = None,
                  input: bytes | None = None) -> tuple[int, str, str]:
        """Run one tool: ``(returncode, stdout, stderr)``; killed (returncode -9) after ``timeout``.
        ``input`` goes to its standard input (a credential never travels as an argument or a file)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as e:
            raise CondorError(f"cannot run {argv[0]}: {e.strerror} (are HTCondor's tools installed on this host?)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return -9, "", f"{Path(argv[0]).name} did not answer within {self.timeout:g}s"
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass(frozen=True)
class UserSchedd:
    """The schedd, reached as one HTCondor identity (the token in ``token_dir``)."""

    tools: CondorTools
    identity: str  #: e.g. ``alice@cms-af.unl.edu``, for messages
    token_dir: Path

    def environment(self) -> dict[str, str]:
        """The tool's whole environment: this identity's token and IDTOKENS only (never the
        gateway's FS/host identity, never another token directory).  Authentication stays what the
        daemons ask for, so a refused token still finds the schedd (READ) and hears its refusal."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **self.tools.environment,
            "_CONDOR_SEC_TOKEN_DIRECTORY": str(self.token_dir),
            "_CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY": str(self.token_dir),
            "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS",
        }

    @property
    def where(self) -> str:
        """The schedd and collector the tools ask, for messages."""
        env = self.tools.environment
        schedd = env.get("_CONDOR_SCHEDD_HOST") or "the configured schedd"
        collector = env.get("_CONDOR_COLLECTOR_HOST")
        return f"schedd {schedd}" + (f" via collector {collector}" if collector else "")

    async def _run(self, argv: list[str], cwd=None) -> tuple[int, str, str]:
        return await self.tools.run(argv, self.environment(), cwd=cwd)

    def _failure(self, action: str, code: int, output: str) -> CondorError:
        """The error for a failed call (a call killed at the time bound reads as an unreachable schedd)."""
        return classify_failure(action, code, output, self.where)

    async def submit(self, directory: str | os.PathLike, description_file: str) -> str:
        """``condor_submit -spool``: the files in ``directory`` travel to the schedd now; the new job id."""
        action = f"submit a job as {self.identity}"
        argv = [self.tools.submit, "-spool", "-terse", description_file]
        code, out, err = await self._run(argv, cwd=directory)
        if code != 0:
            raise self._failure(action, code, out + err)
        return parse_submit_output(out)

    async def reschedule_when_spooled(self, job_ids: Iterable[str], timeout: float = 15.0, interval: float = 0.25) -> bool:
        """Once the jobs' spooled input has arrived, ask the schedd to advertise them to the negotiator now
        (``condor_reschedule``).  condor_submit's own request comes while the schedd still holds a spooled
        job (it naps a second after each transfer), so a negotiation cycle can pass the job by until the
        schedd's next ``SCHEDD_INTERVAL`` update.  Best effort: False without the tool, when the jobs are
        still spooling at ``timeout``, or when the call fails; never raises but a cancellation."""
        if not self.tools.reschedule:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job_ids = list(job_ids)
        await asyncio.sleep(SPOOL_NAP)  # not released before: no need to ask the schedd earlier
        try:
            while any(state.spooling for state in (await self.query(job_ids)).values()):
                if loop.time() > deadline:
                    return False
                await asyncio.sleep(interval)
            name = ["-name", self.tools.schedd_name] if self.tools.schedd_name else []
            code, _, _ = await self._run([self.tools.reschedule, *name])
        except CondorError:
            return False
        return code == 0

    async def remove(self, constraint: str) -> bool:
        """``condor_rm -constraint``: False if no job of this identity matched (already gone)."""
        action = f"remove jobs as {self.identity}"
        code, out, err = await self._run([self.tools.remove, "-constraint", constraint])
        if nothing_to_remove(out + err):
            return False  # (condor_rm exits 0 when the queue holds no job of this identity at all)
        if code == 0:
            return True
        raise self._failure(action, code, out + err)

    async def store_token(self, service: str, token: bytes) -> None:
        """``condor_store_cred add-oauth -P -s <service> -i -``: the credd keeps ``token`` (an access token,
        read from standard input) as this identity's, and the starter copies it into the identity's jobs
        that name ``service`` in ``use_oauth_services`` -- also into those already running."""
        action = f"store the {service} token of {self.identity} in the HTCondor credd"
        argv = [self.tools.store_cred, "add-oauth", "-P", "-s", service, "-i", "-"]
        code, out, err = await self.tools.run(argv, self.environment(), input=token)
        if code != 0 or not store_cred_succeeded(out):
            raise store_cred_failure(action, code, out + err)

    async def query(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The listed jobs that are still in the queue (a job that left it is missing from the answer)."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        action = f"read the queue as {self.identity}"
        argv = [self.tools.query, *ids, "-json", "-attributes", ",".join(JOB_ATTRIBUTES)]
        code, out, err = await self._run(argv)
        if code != 0:
            raise self._failure(action, code, out + err)
        return parse_job_ads(out)

    async def history(self, job_id: str) -> JobState | None:
        """How a job that left the queue ended, or None if the schedd's history does not know it."""
        action = f"read the job history as {self.identity}"
        name = ["-name", self.tools.schedd_name] if self.tools.schedd_name else []
        argv = [self.tools.history, *name, job_id, "-limit", "1", "-scanlimit", str(HISTORY_SCAN_LIMIT),
                "-json", "-attributes", ",".join(JOB_ATTRIBUTES)]
        code, out, err = await self._run(argv)
        if code != 0:
            raise self._failure(action, code, out + err)
        return parse_job_ads(out).get(job_id)

    async def why_not_running(self, job_id: str, role: str, state: JobState | None) -> str:
        """One line on why a job is not running: its state in the queue, else how it ended (the history)."""
        if state is not None:
            return one_line(f"the {role} job {job_id} {state.describe()}")
        try:
            ended = await self.history(job_id)
        except CondorError as e:
            ended, why = None, f" (its history could not be read: {e})"
        else:
            why = "" if ended else " (the schedd's history does not know how it ended)"
        how = f": it {ended.describe()}" if ended else ""
        return one_line(f"the {role} job {job_id} left the HTCondor queue{how}{why}")
