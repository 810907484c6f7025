"""mwiproxy.metrics"""
