"""mwiproxy.identity"""
