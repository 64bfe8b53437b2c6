"""The node manager process: its worker pool, resource leases, process deaths and placement-group
bundles on the node. Imports ``gcs`` (the node table's vocabulary), ``objects``, ``rpc`` and below.
"""
