"""The hub on Kubernetes: CasaKubeSpawner, its manifest builders, its API calls and ``casa render``."""

__all__ = ["CasaKubeSpawner", "CasaKubeError", "NamedServerError", "SessionObjectError", "SessionCleanupError"]


def __getattr__(name):
    # imported on first use: `casa render` loads this package before it may point KUBECONFIG at a
    # placeholder, and kubernetes_asyncio reads KUBECONFIG when first imported
    if name == "CasaKubeSpawner":
        from .spawner import CasaKubeSpawner

        return CasaKubeSpawner
    if name == "NamedServerError":
        from ..session import NamedServerError

        return NamedServerError
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
