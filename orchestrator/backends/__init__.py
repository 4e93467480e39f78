"""Runner backends: where a job's container runs (the local engine now; Swarm later)."""
