"""wtal.engine"""
