"""``casa check-config``'s checks of the spawner: casa's class, renewal between polls, the IngressRouteTCP CRD.

Registered in the ``casa.checks`` entry-point group (see :mod:`casa_hub.check_config`).  The
route's API group and version must be one Traefik's CRDs define, or every spawn fails at its
last step with a 404 from the Kubernetes API: the CRDs given with ``--traefik-crds`` decide,
else the groups Traefik itself has shipped IngressRouteTCP under.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from casa_hub.check_config import CheckReport, configured_value, renewal_window_problems, resolve_class
from casa_hub.errors import ConfigurationError

#: (group, version, plural) of IngressRouteTCP in Traefik 3 and 2.10+ (traefik.io), and in Traefik < 2.10
TRAEFIK_ROUTE_RESOURCES = {
    ("traefik.io", "v1alpha1", "ingressroutetcps"),
    ("traefik.containo.us", "v1alpha1", "ingressroutetcps"),
}


def route_resources_in(paths: list[str]) -> set[tuple[str, str, str]]:
    """(group, served version, plural) of every IngressRouteTCP CRD in the YAML files (a ``List`` too)."""
    found = set()
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as e:
            raise ConfigurationError(f"--traefik-crds {path}: cannot read it: {e}") from None
        items = []
        for doc in documents:
            if isinstance(doc, dict):
                items.extend(doc.get("items") or [] if doc.get("kind") == "List" else [doc])
        for crd in items:
            spec = crd.get("spec") or {} if isinstance(crd, dict) and crd.get("kind") == "CustomResourceDefinition" else {}
            if (spec.get("names") or {}).get("kind") != "IngressRouteTCP":
                continue
            for version in spec.get("versions") or []:
                if version.get("served", True):
                    found.add((spec.get("group"), version.get("name"), spec["names"].get("plural")))
    return found


def _check_route(report: CheckReport, cls: type) -> None:
    group, version, plural = (configured_value(report.config, cls, n) for n in ("ingress_route_group", "ingress_route_version", "ingress_route_plural"))
    if report.traefik_crds:
        defined, source = route_resources_in(report.traefik_crds), " and ".join(report.traefik_crds)
        if not defined:
            report.problem(f"--traefik-crds {source} defines no IngressRouteTCP")
            return
    else:
        defined, source = TRAEFIK_ROUTE_RESOURCES, "Traefik's CRDs"
    if (group, version, plural) not in defined:
        known = ", ".join(f"{g}/{v} {p}" for g, v, p in sorted(defined))
        report.problem(f"CasaKubeSpawner.ingress_route_group/version/plural = {group}/{version} {plural}: {source} define no "
                       f"such IngressRouteTCP (they define {known})")
    else:
        report.note(f"routes: IngressRouteTCP {group}/{version}")


def check_spawner(report: CheckReport) -> None:
    from .local.spawner import CasaLocalSpawner

    value = report.config.JupyterHub.get("spawner_class") if "JupyterHub" in report.config else None
    if value is None:
        report.problem("JupyterHub.spawner_class is not set (the hub would use LocalProcessSpawner): use 'casa-kube' or 'casa-local'")
        return
    try:
        cls = resolve_class(value, "jupyterhub.spawners")
    except ConfigurationError as e:
        report.problem(f"JupyterHub.spawner_class: {e}")
        return
    kube = _kube_spawner_class()
    casa = tuple(c for c in (kube, CasaLocalSpawner) if c is not None)
    if not (isinstance(cls, type) and issubclass(cls, casa)):
        report.problem(f"JupyterHub.spawner_class {value!r} is not one of casa's spawners ('casa-kube', 'casa-local' or a subclass): "
                       "sessions would get no scheduler, credentials or route")
        return
    report.note(f"spawner {cls.__module__}.{cls.__name__}")
    interval = float(configured_value(report.config, cls, "poll_interval"))
    if report.facility is not None:
        for problem in renewal_window_problems(report.facility, interval, f"{cls.__name__}.poll_interval"):
            report.problem(problem)
    _check_refresh(report)
    _check_data_tokens(report)
    if kube is not None and issubclass(cls, kube):
        _check_route(report, cls)


def _check_data_tokens(report: CheckReport) -> None:
    """The credd service (``Facility.data_token_service``) needs IDTOKENs: the hub stores each token as its user."""
    facility = report.facility
    if facility is None or not facility.data_token_service:
        if facility is not None and facility.schedd_host:
            report.note("data tokens travel once with each HTCondor worker and are not renewed there "
                        "(no Facility.data_token_service)")
        return
    if not facility.issues_condor_tokens:
        report.problem(f"Facility.data_token_service={facility.data_token_service!r} needs Facility.signing_key_file: the hub "
                       "gives the credd each user's data token with the user's own IDTOKEN")
        return
    from .data_token import DataTokenStore

    store = DataTokenStore(config=report.config, facility=facility)
    report.note(f"data tokens kept fresh in running workers by the credd (service {facility.data_token_service}, "
                f"credd {facility.credd_host or 'HTCondor default'}, {store.store_command})")


def _check_refresh(report: CheckReport) -> None:
    from .refresh import SessionRefresh

    try:
        settings = SessionRefresh(config=report.config)
    except Exception as e:  # a value the trait refuses: the hub would fail at the first poll
        report.problem(f"SessionRefresh: {e}")
        return
    facility = report.facility
    if facility is not None and settings.certificate_margin >= facility.tls_lifetime:
        report.problem(f"SessionRefresh.certificate_margin={settings.certificate_margin:g} is not below Facility.tls_lifetime="
                       f"{facility.tls_lifetime}: every session would be stopped at its first poll")
    report.note(f"background refresh: on access lost {settings.on_access_lost}, groups re-checked every {settings.group_check_interval:g}s")


def _kube_spawner_class():
    try:
        from .kube.spawner import CasaKubeSpawner
    except ImportError:  # kubespawner not installed: no config can be using it
        return None
    return CasaKubeSpawner
