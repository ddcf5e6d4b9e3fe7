"""wtal.models"""
