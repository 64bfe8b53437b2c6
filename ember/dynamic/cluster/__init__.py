"""A cluster of nodes: the ``ember start`` node daemon, the records it leaves for ``ember stop`` and
drivers, and the driver's watch over the processes it started. Imports ``gcs``, ``core`` and below.
"""
