"""mwiproxy.config"""
