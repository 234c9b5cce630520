"""fedkt.models"""
