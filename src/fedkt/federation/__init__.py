"""fedkt.federation"""
