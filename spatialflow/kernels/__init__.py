"""Pure numpy/numba kernels: no Dask, no I/O, so each can be tested and benchmarked alone."""
