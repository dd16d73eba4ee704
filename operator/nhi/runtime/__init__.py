"""The controller runtime: generic machinery that turns watch events into reconciles.

Nothing here knows a kind of the operator's own: the reconcile functions, the caches'
transforms and which event re-checks which object are given by the caller (the wiring in
:mod:`nhi.handlers`). Below the reconcilers, above the API client (:mod:`nhi.k8s`).
"""
