"""overlaylab: a port of Docker 1.10.3's overlay graph driver, and a compatibility lab for it."""
__version__ = "0.1.0"
