"""The object plane: the node's store accounting and spilling, writing large objects into segments,
and serving and pulling them across nodes. Imports ``ember._system`` only.
"""
