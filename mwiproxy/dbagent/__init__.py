"""The database agent: `mwiproxy start --roles=db` (floor 4, beside `server.py`).

It joins the cluster with a `db` join token, registers its databases with heartbeats,
and serves the cluster proxies' sessions for them over mutual TLS (`wire/agentlink.py`)
with the same PostgreSQL engine the embedded cluster runs in-process.
"""
