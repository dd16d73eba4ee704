"""nhi.reconcilers"""
