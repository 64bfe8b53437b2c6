"""OS-level pieces below both the runtime and the transports: serialization and fast copies,
named shared-memory segments, ember's own processes, the HMAC keys and the cluster token, and
NVML with CUDA_VISIBLE_DEVICES.

They know nothing of tasks, graphs or GPUs' tensors: a module here imports only the standard
library, third-party packages, ``ember.exceptions`` and other modules of ``ember._system``.
"""
