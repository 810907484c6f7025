"""mwiproxy.proxy"""
