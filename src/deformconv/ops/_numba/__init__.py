"""Numba CPU kernels. Host functions take and return torch tensors."""
