"""BigEarthNet-MM platform: ingest, train, retrieve and serve on Ray.

Importing the package has no side effects; every subsystem lives in its own module.
"""

__version__ = "0.1.0"
