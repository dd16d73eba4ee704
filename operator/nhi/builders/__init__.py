"""nhi.builders"""
