"""mwiproxy.auth"""
