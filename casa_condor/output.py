"""What HTCondor's tools answer, read into plain data: job ids, job states, and why a call failed.

Pure functions over the text of ``condor_submit -terse``, ``condor_q -json``, ``condor_history
-json`` and the tools' error output (HTCondor 23-25); the tests feed them outputs captured from
a real pool.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from casa_hub.errors import CasaError

#: ``JobStatus`` values (HTCondor's job ClassAd).
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = 1, 2, 3, 4, 5, 6, 7
STATUS_NAMES = {IDLE: "idle", RUNNING: "running", REMOVED: "removed", COMPLETED: "completed",
                HELD: "held", TRANSFERRING_OUTPUT: "transferring output", SUSPENDED: "suspended"}
#: a job in these states may still become (or is) a live scheduler or worker
ALIVE = frozenset({IDLE, RUNNING, SUSPENDED})
#: ``HoldReasonCode``s: a hold by ``condor_hold`` (the owner or an administrator), and the hold that
#: ``condor_submit -spool`` puts on every job until its input files arrive
USER_REQUEST, SPOOLING_INPUT = 1, 16

#: the longest reason a user is shown (an HTTP reason phrase)
REASON_LIMIT = 600

#: the attributes the parsers read (``condor_q``/``condor_history -attributes``)
JOB_ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "HoldReason", "HoldReasonCode", "LastHoldReason",
                  "LastHoldReasonCode", "ExitCode", "ExitBySignal", "ExitSignal", "RemoveReason")

_TERSE = re.compile(r"^\s*(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)\s*$", re.M)


class CondorError(CasaError):
    """An HTCondor tool failed; the message says what the user can do about it."""


class ScheddUnreachable(CondorError):
    """The schedd (or the collector that locates it) did not answer."""


class IdentityRefused(CondorError):
    """The schedd did not accept the user's IDTOKEN, or the identity may not do this."""


class CondorOutputError(CondorError):
    """A tool answered something these parsers do not understand."""


class CreddUnavailable(CondorError):
    """The credd, which keeps the users' data tokens for their jobs, did not answer or has no token of the user."""


@dataclass(frozen=True)
class JobState:
    """One job as the schedd (queue) or its history reports it."""

    job_id: str  #: ``"<ClusterId>.<ProcId>"``
    status: int
    hold_reason: str = ""
    hold_reason_code: int | None = None
    last_hold_reason: str = ""
    exit_code: int | None = None
    exit_signal: int | None = None
    remove_reason: str = ""

    @property
    def spooling(self) -> bool:
        """Held by ``condor_submit -spool`` until its input files have arrived: about to run, not failed."""
        return self.status == HELD and self.hold_reason_code == SPOOLING_INPUT

    @property
    def alive(self) -> bool:
        return self.status in ALIVE or self.spooling

    def describe(self) -> str:
        """Why the job is not (or no longer) running, in one line."""
        name = STATUS_NAMES.get(self.status, f"in status {self.status}")
        if self.spooling:
            return "is waiting for its input files to be spooled"
        if self.status == HELD:
            if not self.hold_reason and self.hold_reason_code == USER_REQUEST:
                return "was held by its owner or a pool administrator (condor_hold, no reason given)"
            return f"was held by HTCondor: {self.hold_reason or f'no reason given (code {self.hold_reason_code})'}"
        if self.status == COMPLETED:
            if self.exit_signal is not None:
                return f"was killed by signal {self.exit_signal}"
            return f"exited with code {self.exit_code}"
        if self.status == REMOVED:
            held = f" after it was held: {self.last_hold_reason}" if self.last_hold_reason else ""
            return f"was removed ({self.remove_reason or 'no reason given'}){held}"
        return f"is {name}"


def parse_submit_output(text: str) -> str:
    """The job id (``"12.0"``) that ``condor_submit -terse`` printed for a one-job submission."""
    matches = _TERSE.findall(text)
    if len(matches) != 1:
        raise CondorOutputError(f"condor_submit did not print one job id: {_first_lines(text)}")
    first_cluster, first_proc, last_cluster, last_proc = matches[0]
    if (first_cluster, first_proc) != (last_cluster, last_proc):
        raise CondorOutputError(f"condor_submit made more than one job: {text.strip()}")
    return f"{int(first_cluster)}.{int(first_proc)}"


def _job_state(ad: dict) -> JobState:
    try:
        job_id = f"{int(ad['ClusterId'])}.{int(ad['ProcId'])}"
        status = int(ad["JobStatus"])
    except (KeyError, TypeError, ValueError):
        raise CondorOutputError(f"a job ad without ClusterId/ProcId/JobStatus: {ad!r:.200}") from None
    last_hold = ad.get("LastHoldReason") or ""
    if ad.get("LastHoldReasonCode") == SPOOLING_INPUT:
        last_hold = ""  # every spooled job starts held until its input files arrive
    signal = ad.get("ExitSignal") if ad.get("ExitBySignal") else None
    return JobState(
        job_id=job_id,
        status=status,
        hold_reason=ad.get("HoldReason") or "",
        hold_reason_code=ad.get("HoldReasonCode"),
        last_hold_reason=last_hold,
        exit_code=ad.get("ExitCode"),
        exit_signal=signal if status == COMPLETED else None,
        remove_reason=ad.get("RemoveReason") or "",
    )


def parse_job_ads(text: str) -> dict[str, JobState]:
    """Job states by job id from ``condor_q -json`` or ``condor_history -json`` (empty output: no jobs)."""
    if not text.strip():
        return {}
    try:
        ads = json.loads(text)
    except ValueError:
        raise CondorOutputError(f"not the JSON list of job ads that -json prints: {_first_lines(text)}") from None
    if not isinstance(ads, list) or not all(isinstance(ad, dict) for ad in ads):
        raise CondorOutputError(f"not a list of job ads: {_first_lines(text)}")
    states = (_job_state(ad) for ad in ads)
    return {s.job_id: s for s in states}


# what the tools print when they cannot reach the daemon, and when the daemon refuses the identity
_UNREACHABLE = ("failed to connect", "can't find address", "cannot find address", "connection refused",
                "timed out", "did not answer", "unable to locate", "no route to host")
_REFUSED = ("authenticate", "permission denied", "not authorized", "unauthorized", "security session")
_NOTHING_TO_REMOVE = ("couldn't find/remove all jobs", "there are no jobs in the queue")
#: condor_submit's words when a job's use_oauth_services cannot be served: no credd, or no token of the user
_CREDD_UNREACHABLE = ("address of credd", "to credd failed", "locate(credd) failed")
_CREDENTIAL_MISSING = re.compile(r"credential '([^']+)'[^']*is missing", re.I)
#: lines of condor_store_cred's output that say nothing about what happened
_STORE_CRED_PREAMBLE = ("account:", "credtype:")


def _first_lines(text: str, lines: int = 6) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][:lines]
    return " / ".join(kept) or "(no output)"


def classify_failure(action: str, returncode: int, output: str, where: str = "") -> CondorError:
    """The error for a tool that failed while doing ``action``, with the tool's own words (first lines);
    ``where`` names the schedd and collector asked, for an unreachable one."""
    lowered = output.lower()
    words = _first_lines(output)
    missing = _CREDENTIAL_MISSING.search(output)
    if missing:
        return CreddUnavailable(f"could not {action}: the HTCondor credd holds no {missing.group(1)!r} token of this "
                                f"user for the job to read data with ({words})")
    if any(s in lowered for s in _CREDD_UNREACHABLE):
        return CreddUnavailable(f"could not {action}: the HTCondor credd, which hands the job its data token, "
                                f"is unreachable ({words})")
    if any(s in lowered for s in _REFUSED):
        return IdentityRefused(f"HTCondor refused to {action}: {words}")
    if any(s in lowered for s in _UNREACHABLE):
        at = f"{where}: " if where else ""
        return ScheddUnreachable(f"could not {action}: the HTCondor schedd is unreachable ({at}{words})")
    return CondorError(f"could not {action} (exit status {returncode}): {words}")


def nothing_to_remove(output: str) -> bool:
    """True if ``condor_rm`` failed only because no job matched (already gone), not for an error."""
    lowered = output.lower()
    if any(s in lowered for s in _REFUSED + _UNREACHABLE):
        return False
    return any(s in lowered for s in _NOTHING_TO_REMOVE)


def one_line(text: str) -> str:
    """A reason fit for an HTTP reason phrase: one line, printable ASCII, bounded."""
    flat = " ".join(text.split()).encode("ascii", "replace").decode()
    return flat if len(flat) <= REASON_LIMIT else flat[: REASON_LIMIT - 3] + "..."


def store_cred_failure(action: str, returncode: int, output: str) -> CondorError:
    """The error for a ``condor_store_cred`` that failed: it prints "Operation failed." whether the credd
    is down, unknown or refused the identity, so the message names the likely causes."""
    kept = "\n".join(line for line in output.splitlines() if not line.strip().lower().startswith(_STORE_CRED_PREAMBLE))
    return CreddUnavailable(f"could not {action} (exit status {returncode}): {_first_lines(kept)} -- is the credd running "
                            "(CREDD in the pool's DAEMON_LIST), is CREDD_HOST its address, and does the pool accept the IDTOKEN?")


def store_cred_succeeded(output: str) -> bool:
    """True if ``condor_store_cred`` said the credential was stored."""
    return "operation succeeded" in output.lower()
