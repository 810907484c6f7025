"""mwiproxy.cli"""
