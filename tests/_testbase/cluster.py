"""`mwiproxy start` as a real process, driven with `mwictl`: the dev kit's
(mwiproxy.devkit.cluster)."""

from __future__ import annotations

from mwiproxy.devkit.cluster import ClusterProcess

__all__ = ["ClusterProcess"]
