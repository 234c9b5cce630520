"""fedkt.algorithms"""
