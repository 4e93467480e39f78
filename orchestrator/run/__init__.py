"""Running jobs: one attempt, watching it, the warm start, recovery after a restart."""
