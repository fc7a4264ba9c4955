"""Integration tier: a local Ray, SeaweedFS, one real Serve deployment, subprocess tools (`make test-integration`)."""
