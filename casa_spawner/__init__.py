"""casa_spawner: where a session runs (Kubernetes pods, local processes)."""
