"""The packages are split by where their code runs; the public names from before the split still work."""

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """Top-level modules a fresh interpreter holds after ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_session_code_never_imports_the_hub_side():
    """casa_session runs in notebooks, sidecars and batch jobs: no spawner, no JupyterHub, no Kubernetes client."""
    loaded = imported_after("import casa_session.cluster, casa_session.credsync, casa_session.htcondor_workers, casa_session.adapt")
    assert loaded.isdisjoint({"casa_spawner", "casa_auth", "jupyterhub", "kubespawner", "kubernetes_asyncio", "oauthenticator"})


def test_htcondor_plumbing_is_usable_from_a_session():
    """casa_condor serves the gateway, the spawners' clean-up and a session's workers: it never imports a spawner."""
    loaded = imported_after("import casa_condor.schedd, casa_condor.output, casa_condor.submit")
    assert loaded.isdisjoint({"casa_spawner", "casa_auth", "jupyterhub", "kubespawner", "kubernetes_asyncio", "dask_gateway_server"})


def test_the_credential_sidecar_needs_only_the_standard_library():
    """The sync sidecar image needs the package, none of its dependencies."""
    loaded = imported_after("import casa_session.credsync") - imported_after("pass")  # minus site's own .pth imports
    third_party = loaded - set(sys.stdlib_module_names) - {"casa_session", "casa_hub"}
    assert third_party == set(), third_party


def test_notebooks_written_before_the_split_still_import_casa_cluster():
    from casa_session.cluster import CasaCluster, SchedulerConnection
    from casa_spawner.cluster import CasaCluster as OldCasaCluster
    from casa_spawner.cluster import SchedulerConnection as OldConnection

    assert OldCasaCluster is CasaCluster and OldConnection is SchedulerConnection


@pytest.mark.parametrize("name, module", [
    ("casa-kube", "casa_spawner.kube"),
    ("casa-local", "casa_spawner.local"),
])
def test_spawner_entry_points_and_dotted_names_agree(name, module):
    from importlib import import_module
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == name]
    cls = ep.load()
    assert getattr(import_module(module), cls.__name__) is cls  # c.JupyterHub.spawner_class = "casa_spawner.kube.CasaKubeSpawner"
