"""Triton kernels for CUDA (and, with ``TRITON_INTERPRET=1``, Triton's CPU interpreter).

Import this package's modules only through ``ops._dispatch``: whether ``triton.jit``
compiles or interprets a kernel is decided when its module is first imported.
"""
