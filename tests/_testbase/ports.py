"""Free loopback ports: the dev kit's (mwiproxy.devkit.ports)."""

from __future__ import annotations

from mwiproxy.devkit.ports import free_port

__all__ = ["free_port"]
