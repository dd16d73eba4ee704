"""Benchmarks of nhi-operator against the local control plane (``python -m bench``).

Every result is a ratio to a floor measured in the same run on the same machine (or, where
the issue sets an absolute target, the absolute value). API requests are counted from the
API server's own ``apiserver_request_total`` metric, never from the operator.
"""
