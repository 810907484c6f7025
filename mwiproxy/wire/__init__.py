"""mwiproxy.wire"""
