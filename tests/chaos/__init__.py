"""Chaos tests: real processes, real faults (marker `chaos`).

Each test runs a short smoke variant by default (CI, about a minute for all of them) and a
long one when MWIPROXY_CHAOS_LONG=1 is set - more cycles, longer outages, more clients:

    MWIPROXY_CHAOS_LONG=1 python3 -m pytest -p no:cacheprovider -m chaos tests/chaos

- test_postgres_restart: PostgreSQL restarted during pgbench through tunnel mode.
- test_cluster_kill: the cluster SIGKILLed and restarted while a bot runs.
- test_disk_full: the bot's output disk full (ENOSPC), then free again.
- test_auth_unreachable: the auth API black-holed for longer than a renewal interval.
"""
