"""Per-repository environments: what a commit declares it needs to be tested (its
dependencies and test tools), built once per fingerprint into an image of its own."""
