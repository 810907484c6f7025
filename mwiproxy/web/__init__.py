"""The web UI: HTTP on the cluster port (ALPN http/1.1, or none), served by aiohttp with
Jinja2 templates; it sits beside the auth API and imports auth/ downward only."""
