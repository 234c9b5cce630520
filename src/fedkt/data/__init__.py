"""fedkt.data"""
