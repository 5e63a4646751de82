"""Submit-description pieces every casa job shares: spooled encrypted files, extra directives, constraints.

No shared filesystem: what a job needs travels with ``condor_submit -spool`` and reaches the
execute node encrypted (``encrypt_input_files``).  The job ad is readable by every user of the
pool (``condor_q -l``), so it holds names and resources only; the directives that would change
how files travel or who sees them are reserved for the code that builds the job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from casa_hub.errors import ConfigurationError

_SUBMIT_KEY = re.compile(r"^(\+|MY\.)?[A-Za-z_][A-Za-z0-9_.]*$")
#: printable ASCII without spaces, quotes, backslashes or ``$`` (condor_submit expands ``$(...)`` everywhere)
_PLAIN_VALUE = re.compile(r'^[!#%-\[\]-~]{1,256}$')

#: submit commands that decide what runs, what travels and how: never taken from a user's extra directives
TRANSFER_KEYS = frozenset(k.lower() for k in (
    "universe", "executable", "arguments", "args", "environment", "env", "getenv", "transfer_executable",
    "transfer_input_files", "encrypt_input_files", "dont_encrypt_input_files", "should_transfer_files",
    "when_to_transfer_output", "leave_in_queue", "queue", "initialdir", "batch_name", "container_image",
    "docker_image",
))


def ad_attribute_keys(*attributes: str) -> frozenset[str]:
    """The two spellings (``+Name``, ``MY.Name``) of job ad attributes, lower-cased, for a reserved set."""
    return frozenset(f"{prefix}{a}".lower() for a in attributes for prefix in ("+", "my."))


def check_extra_directives(directives: Mapping[str, object], reserved: Iterable[str], what: str,
                           owner: str = "casa") -> dict[str, str]:
    """Extra submit commands as ``{key: value}`` strings, refused where they would replace a ``reserved`` one.

    ``what`` names the setting in messages, e.g. ``"jobqueue.casa.job-extra-directives"``; ``owner``
    who sets the reserved ones (``"the HTCondor backend"``).
    """
    reserved = {k.lower() for k in reserved}
    out = {}
    for key, value in (directives or {}).items():
        if not isinstance(key, str) or not _SUBMIT_KEY.match(key):
            raise ConfigurationError(f"{what}: {key!r} is not a submit command")
        if key.lower() in reserved:
            raise ConfigurationError(f"{what}: {key!r} is set by {owner} itself and cannot be changed")
        value = str(value)
        if "\n" in value or "\r" in value:
            raise ConfigurationError(f"{what}: the value of {key!r} spans lines")
        out[key] = value
    return out


def spooled_files(names: Iterable[str]) -> dict[str, str]:
    """The directives that send ``names`` (plain file names in the submit directory) with the job, encrypted."""
    names = sorted(names)
    for name in names:
        if not name or "/" in name or "," in name or name.strip() != name or name.startswith("."):
            raise ValueError(f"job file name {name!r} must be a plain file name")
    files = ", ".join(names)
    return {
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        "transfer_input_files": files,
        "encrypt_input_files": files,
    }


def string_literal(value: str, what: str) -> str:
    """``value`` as a ClassAd string literal, for values that are names or addresses (no quotes, spaces, ``\\`` or ``$``)."""
    if not _PLAIN_VALUE.match(value or ""):
        raise ValueError(f"{what} {value!r} cannot be a job attribute (printable characters without spaces, quotes, \\ or $)")
    return f'"{value}"'


def attribute_equals(attribute: str, value: str) -> str:
    """A constraint ``attribute == "value"`` (``value`` checked as by :func:`string_literal`)."""
    return f"{attribute} == {string_literal(value, attribute)}"


def job_ids_constraint(job_ids: Iterable[str]) -> str:
    """A constraint matching exactly these ``"<cluster>.<proc>"`` job ids."""
    terms = []
    for job_id in sorted(set(job_ids)):
        cluster, _, proc = job_id.partition(".")
        if not (cluster.isdigit() and proc.isdigit()):
            raise ValueError(f"{job_id!r} is not an HTCondor job id")
        terms.append(f"(ClusterId == {int(cluster)} && ProcId == {int(proc)})")
    if not terms:
        raise ValueError("no job ids")
    return " || ".join(terms)
