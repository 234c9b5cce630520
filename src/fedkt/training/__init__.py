"""fedkt.training"""
