"""The GCS process: the server, where its tables live (memory, SQLite), the table of nodes and the
placement-group manager with its pure placement policy. Imports ``rpc``, ``common`` and below.
"""
