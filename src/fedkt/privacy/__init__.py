"""fedkt.privacy"""
