"""End-to-end tier: CLI subprocesses, multi-node clusters, the browser, the demo (`make test-e2e`)."""
