"""The controller runtime: generic machinery that turns watch events into reconciles.

- :mod:`~nhi.runtime.controller`: ``Controller``, watch caches -> work queue ->
  ``reconcile(key) -> Result(requeue_at)``, given its reconcile function;
- :mod:`~nhi.runtime.queue`: the work queue (deduplicated keys, one worker per key, a timer
  heap, backoff);
- :mod:`~nhi.runtime.informer` and :mod:`~nhi.runtime.caches`: list-and-watch caches, and
  the set of them an operator starts and waits for;
- :mod:`~nhi.runtime.store` and :mod:`~nhi.runtime.overlay`: what a reconcile reads instead
  of the API server, corrected by the controller's own writes until the watch catches up;
- :mod:`~nhi.runtime.finalizers`: finalizer changes as guarded JSON patches;
- :mod:`~nhi.runtime.peering`: which replica may reconcile (kopf's peering rule);
- :mod:`~nhi.runtime.clock`: the one clock, injected.

Nothing here knows a kind of the operator's own: the reconcile functions, the caches'
transforms and which event re-checks which object are given by the caller (the wiring in
:mod:`nhi.handlers`). Below the reconcilers, above the API client (:mod:`nhi.k8s`).
"""
