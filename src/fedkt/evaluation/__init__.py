"""fedkt.evaluation"""
