"""The control plane: messages between ember processes over authenticated ZeroMQ sockets.
Imports ``ember._system`` only.
"""
