"""The metric suite and its charts, shared by training (validation) and evaluation (test) with no cycle between them."""
