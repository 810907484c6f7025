"""A database agent process: the dev kit's (mwiproxy.devkit.agent)."""

from __future__ import annotations

from mwiproxy.devkit.agent import AGENT_SERVICE, AGENT_YAML, Agent, db_token

__all__ = ["AGENT_SERVICE", "AGENT_YAML", "Agent", "db_token"]
