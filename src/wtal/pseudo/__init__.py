"""wtal.pseudo"""
