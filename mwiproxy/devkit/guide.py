"""The guide's data, shared by the demo, the bench and the tests."""

from __future__ import annotations

# The role from the guide's step 1, verbatim.
GUIDE_ROLE = """\
kind: role
version: v6
metadata:
  name: example-role
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example-db]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
"""
