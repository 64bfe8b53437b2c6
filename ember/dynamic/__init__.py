"""The dynamic runtime: tasks, actors, the GCS and the object store, one sub-package per process or plane.

- ``api/``: what a program calls (``init``/``get``/``put`` in ``driver.py``, remote functions,
  actors, placement groups, the runtime context).
- ``worker.py``: a worker process's main; it hosts tasks and one actor through the API.
- ``cluster/``: ``ember start``/``stop`` (the node daemon and its records) and the driver's watch.
- ``gcs/``: the GCS process: its server, storage backends, node table and placement groups.
- ``node_manager/``: the node manager process: worker pool, leases of resources, bundles.
- ``core/``: in every process: the core worker (ownership, get/put), refs, submission, lineage.
- ``objects/``: the object plane that ``core/`` and ``node_manager/`` share: the store's
  accounting, segments, transfer between nodes.
- ``rpc/``: the control plane's messaging (one authenticated ZeroMQ endpoint per process).
- ``common/``: the vocabulary of nodes: resources and labels.
- ``graph_binding.py``: the hooks through which the graph layer above plugs in (Note [bind hook]).

Rooms import downward only, in this order from the top: ``worker``, ``api``, ``cluster``,
``gcs`` and ``node_manager``, ``core``, ``objects``, ``rpc``, ``common``; all may import
``ember._system`` and ``ember.exceptions``. Nothing here imports ``ember.dag``, ``ember.engine``,
``ember.channels`` or ``ember.gpu`` (tests/test_layers.py).
"""
