"""nhi.k8s"""
