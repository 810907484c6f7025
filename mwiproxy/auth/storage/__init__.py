"""mwiproxy.auth.storage"""
