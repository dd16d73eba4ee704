"""nhi.cli"""
