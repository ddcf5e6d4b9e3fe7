"""wtal.viz"""
