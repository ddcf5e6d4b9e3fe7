"""wtal.evaluation"""
