"""Models: the input stem shared by training and serving (and, later, the fusion models)."""
