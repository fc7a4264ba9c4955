"""Unit tier: no Ray, no subprocess, no server, no network; milliseconds to a few seconds a test (`make test-unit`)."""
