"""mwiproxy.localproxy"""
