"""Where the work runs: the executors that run a stage's units (in-process, or on Ray)
and attaching to a Ray cluster."""
