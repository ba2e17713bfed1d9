"""Device-agnostic pure-torch kernels: the fallback for devices without a native backend."""
