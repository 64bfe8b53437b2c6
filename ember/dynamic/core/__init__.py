"""In every ember process: the core worker (ownership, get/put/wait), object refs, submission over
leased workers, lineage, the task's codec and its hooks. Imports ``objects``, ``rpc`` and below.
"""
