"""How many threads the BLAS may use for the GEMMs of the calling thread.

OpenBLAS >= 0.3.27 keeps a per-thread count (`openblas_set_num_threads_local`), and in a thread
other than the main one the process-wide `openblas_set_num_threads` (what threadpoolctl calls)
changes nothing that thread sees: the server computes on a worker thread, so a "one thread for
this small GEMM" request was silently ignored there. That cost latency (a second BLAS thread
waiting for a busy core) and made the server's vectors differ from the same engine's on the main
thread, since OpenBLAS's result depends on its thread count. So the count is set per thread,
with the process-wide call only for BLAS libraries that have no per-thread one.
"""

from __future__ import annotations

import contextlib
import ctypes

from threadpoolctl import ThreadpoolController


class BlasThreads:
    def __init__(self):
        self._local = []  # openblas_set_num_threads_local of each OpenBLAS: (n) -> previous n
        self._global = []  # threadpoolctl controllers of the other BLAS libraries
        for controller in ThreadpoolController().lib_controllers:
            if controller.user_api != "blas":
                continue
            setter = None
            if controller.internal_api == "openblas":
                try:
                    setter = ctypes.CDLL(controller.filepath).openblas_set_num_threads_local
                    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
                except (OSError, AttributeError):  # an OpenBLAS older than 0.3.27
                    setter = None
            if setter is not None:
                self._local.append(setter)
            else:
                self._global.append(controller)

    def set(self, n: int, process_wide: bool = True) -> None:
        """From now on, GEMMs called from this thread use at most n BLAS threads. A BLAS with no
        per-thread count is set for the whole process, unless `process_wide` is False (a pool
        thread's initializer must not change what the other threads get)."""
        for setter in self._local:
            setter(n)
        for controller in self._global if process_wide else ():
            controller.set_num_threads(n)

    @contextlib.contextmanager
    def limited(self, n: int):
        """At most n BLAS threads for this thread inside the block, the previous count after."""
        previous = [setter(n) for setter in self._local]
        saved = [controller.get_num_threads() for controller in self._global]
        for controller in self._global:
            controller.set_num_threads(n)
        try:
            yield
        finally:
            for setter, count in zip(self._local, previous):
                setter(count)
            for controller, count in zip(self._global, saved):
                controller.set_num_threads(count)
