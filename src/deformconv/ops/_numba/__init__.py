"""Numba CPU kernels. Host functions take and return torch tensors."""

from .cache_dir import ensure_cache_location

ensure_cache_location()  # before any kernel is decorated: they are all cache=True
