"""Budgets for composing YAML, so a small hostile file cannot cost seconds or memory.

config/loader.py reads every YAML the product reads through BudgetLoader and turns an
OverBudget into a ConfigError with file:line.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

__all__ = ["MAX_YAML_ALIAS_NODES", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "BudgetLoader",
           "OverBudget"]

Node = yaml.Node

# Every YAML the product reads (cluster.yaml, tbot.yaml, role files, role files sent over
# the API) passes these budgets, so a small hostile file cannot cost the parser seconds or
# memory: text over MAX_YAML_BYTES is refused before parsing; nesting deeper than
# MAX_YAML_DEPTH (aliases included) would otherwise end in RecursionError; and aliases may
# add at most MAX_YAML_ALIAS_NODES nodes beyond what the document itself holds ("billion
# laughs": 1.6 KB of nested aliases that expand to a million nodes).
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_ALIAS_NODES = 10_000


class OverBudget(Exception):
    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class BudgetLoader(yaml.SafeLoader):
    """SafeLoader's composer, counting as it builds: each node's expanded size and height
    are known once it is complete, so an alias costs its target's size and height without
    walking it, and the whole check stays linear in the text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0  # nodes enclosing the one being composed
        self._plain = 0  # nodes written out in the text
        self._aliased = 0  # nodes the aliases stand for
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            return self._alias(parent, index, mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise OverBudget(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self._depth += 1
        try:
            node = typing.cast(Node, super().compose_node(parent, index))  # never None here
        finally:
            self._depth -= 1
        shapes = [self._shape[id(child)] for child in _children(node)]
        self._shape[id(node)] = (1 + sum(s for s, _ in shapes),
                                 1 + max((h for _, h in shapes), default=0))
        self._plain += 1
        return node

    def _alias(self, parent: Node | None, index: Any, mark: yaml.Mark) -> Node:
        node = typing.cast(Node, super().compose_node(parent, index))  # refuses undefined ones
        shape = self._shape.get(id(node))
        if shape is None:  # the anchored node is still open: it would contain itself
            raise OverBudget("a YAML alias inside the node it refers to (recursive "
                             "aliases are not supported)", mark)
        size, height = shape
        if self._depth + height > MAX_YAML_DEPTH:
            raise OverBudget(f"YAML nested deeper than {MAX_YAML_DEPTH} levels once this "
                             "alias is expanded", mark)
        self._aliased += size
        if self._aliased > MAX_YAML_ALIAS_NODES + self._plain:
            raise OverBudget(
                f"YAML aliases expand to more than {MAX_YAML_ALIAS_NODES} nodes beyond the "
                f"{self._plain} written out (an alias bomb?); write the values out instead",
                mark)
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
