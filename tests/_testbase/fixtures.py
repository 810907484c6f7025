"""Shared test data: the guide's role lives in the dev kit (mwiproxy.devkit.guide)."""

from __future__ import annotations

from mwiproxy.devkit.guide import GUIDE_ROLE

__all__ = ["GUIDE_ROLE"]
