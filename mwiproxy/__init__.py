"""mwiproxy: short-lived, certificate-based database access for machines."""

__version__ = "0.1.0"
