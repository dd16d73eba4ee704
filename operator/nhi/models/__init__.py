"""nhi.models"""
