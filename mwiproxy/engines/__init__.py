"""mwiproxy.engines"""
