"""The hub on one machine: CasaLocalSpawner, its Traefik route files and the packaged hub configuration."""

from .spawner import CasaLocalSpawner

__all__ = ["CasaLocalSpawner"]
