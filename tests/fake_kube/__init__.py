"""An HTTP-level fake Kubernetes API server, and helpers to drive real spawners against it."""

from pathlib import Path

from .faults import Fault, FaultRules
from .server import FakeKubeApp, Request
from .thread import FakeKube

KUBECONFIG = str(Path(__file__).with_name("kubeconfig.yaml"))

__all__ = ["KUBECONFIG", "Fault", "FaultRules", "FakeKube", "FakeKubeApp", "Request"]
