"""wtal.localize"""
