"""nhi.policies"""
