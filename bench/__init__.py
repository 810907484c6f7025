"""Side-by-side load harness: direct vs proxies on loopback. Run `python -m bench --help`.

Also a library: `bench.load` (bulk and ping-pong clients), `bench.paths` (start a path:
direct, mwiproxy native relay, mwiproxy pure-Python relay, HAProxy), `bench.report`.
"""
