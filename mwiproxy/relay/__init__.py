"""mwiproxy.relay: the steady-state byte relay shared by the cluster proxy and the local
proxy (native for plain sockets, asyncio while a side is TLS)."""
