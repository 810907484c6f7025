"""mwiproxy.bot"""
