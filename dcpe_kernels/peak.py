"""The bytes of the tensors an engine makes, counted on any device.

:class:`TensorPeak` is a ``TorchDispatchMode``: every PyTorch operation run inside
``with TensorPeak():`` adds the storages of its outputs (the returns of a kernel wrapped by
:meth:`TensorPeak.ops` too) and drops each when it dies, and the largest total alive at
once is the peak.  The engines' budgets (``memory_budget``, the preflights
:func:`dcpe_kernels.rnn.required_bytes` and :func:`dcpe_kernels.linear.
linear_required_bytes`) are checked against it on the CPU by the tests and by
``benchmarks/linear_work.py --memory``, at sizes and budgets no GPU run needs.

Two totals:

* ``peak``: the bytes the tensors ask for;
* ``device_peak``: each as PyTorch's CUDA caching allocator may count it at most
  (:func:`dcpe_kernels.rnn.allocator_bytes`: rounded up to 512 bytes, and 1 MiB more past
  1 MiB, with its default settings; ``PYTORCH_CUDA_ALLOC_CONF`` as set in the environment
  when counted), whatever blocks it holds cached; the bound the budgets keep.

A view or an in-place result (same storage as an input) adds nothing.  The temporaries of
a wrapped kernel are not counted, since a device kernel allocates nothing where the
PyTorch references materialise copies.  The internal temporaries of PyTorch's own device
operations are not seen on the CPU; the largest, a sort's (and a sorted ``topk``'s) of
more than 4,096 entries, is added to ``device_peak`` while the operation runs, as the
CUDA radix sort takes it: an index sequence (8 bytes an entry) and cub's temporary
storage, a second copy of the keys and the indices (:func:`sort_workspace`).  Smaller
sorts run in place; scans, reductions and selections keep a few bytes per block.  With
``TensorPeak(blas_workspace=...)`` the first matrix product adds those bytes to
``device_peak`` for good, as PyTorch allocates cuBLAS's workspace at a stream's first
product and keeps it (:func:`dcpe_kernels.rnn.blas_workspace_bytes`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from .rnn import allocator_bytes

__all__ = ["TensorPeak", "sort_workspace"]

#: sorts of at most this many entries along their dimension run in place, in one block
_SMALL_SORT = 4096
#: the operations that take cuBLAS's workspace on a CUDA device
_BLAS_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv",
             "aten::addmv", "aten::dot", "aten::vdot")


def sort_workspace(entries: int, itemsize: int) -> int:
    """Bytes, as the caching allocator may count them, that a CUDA sort of ``entries``
    keys of ``itemsize`` bytes holds besides its outputs: the index sequence it sorts with
    the keys, and cub's temporary storage (the keys and indices once more)."""
    if entries <= _SMALL_SORT:
        return 0
    return allocator_bytes(8 * entries) + allocator_bytes(entries * (itemsize + 8))


def _workspace(func: Any, args: tuple, kwargs: dict | None) -> int:
    """What :func:`sort_workspace` gives a sort's or a sorted ``topk``'s call (else 0)."""
    name = func.name()
    if not name.startswith(("aten::sort", "aten::topk")):
        return 0
    given = dict(zip((a.name for a in func._schema.arguments), args))
    given.update(kwargs or {})
    x = given["self"]
    if name.startswith("aten::topk"):
        return sort_workspace(int(given["k"]), x.element_size()) if given.get(
            "sorted", True) else 0
    if x.dim() == 0:
        return 0
    length = x.shape[given.get("dim", -1)]
    return sort_workspace(length, x.element_size()) * (x.numel() // max(1, length))


class TensorPeak:
    """The largest totals of bytes that tensors made inside ``with TensorPeak():`` hold at
    once (``peak``, ``device_peak``; see the module).

    Parameters
    ----------
    blas_workspace : int
        Bytes ``device_peak`` holds from the first matrix product on (cuBLAS's workspace,
        :func:`dcpe_kernels.rnn.blas_workspace_bytes`); 0 counts none.  Products inside a
        wrapped kernel (:meth:`ops`) take none: its device kernel does not call cuBLAS.
    """

    def __init__(self, blas_workspace: int = 0) -> None:
        # storage address -> (weak reference, bytes, bytes as the allocator counts them)
        self.live: dict[int, tuple[StorageWeakRef, int, int]] = {}
        self.now = self.peak = 0
        self.device_now = self.device_peak = 0
        self._inside = 0
        self._blas = int(blas_workspace)  # still to be taken by the first product
        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if tracker._blas and not tracker._inside and func.name() in _BLAS_OPS:
                    tracker.device_now += tracker._blas
                    tracker._blas = 0
                out = func(*args, **(kwargs or {}))
                if not tracker._inside:
                    tracker._note((args, kwargs), out, _workspace(func, args, kwargs))
                return out

        self._mode = _Mode()

    def _note(self, inputs: Any, outputs: Any, workspace: int = 0) -> None:
        def storages(tree):
            return [t.untyped_storage() for t in torch.utils._pytree.tree_leaves(tree)
                    if isinstance(t, torch.Tensor)]

        # the storages gone since (an address may come back for a new one)
        for key in [k for k, e in self.live.items() if e[0].expired()]:
            _, nbytes, counted = self.live.pop(key)
            self.now -= nbytes
            self.device_now -= counted
        old = {s._cdata for s in storages(inputs)}
        for s in storages(outputs):
            if s._cdata not in old and s._cdata not in self.live:
                nbytes = s.nbytes()
                counted = allocator_bytes(nbytes)
                self.live[s._cdata] = (StorageWeakRef(s), nbytes, counted)
                self.now += nbytes
                self.device_now += counted
        self.peak = max(self.peak, self.now)
        self.device_peak = max(self.device_peak, self.device_now + workspace)

    def ops(self, ops: type) -> type:
        """``ops`` with every public method a kernel: its returns counted, not its
        temporaries."""
        def kernel(f):
            def call(*args, **kwargs):
                self._inside += 1
                try:
                    out = f(*args, **kwargs)
                finally:
                    self._inside -= 1
                self._note((args, kwargs), out)
                return out
            return staticmethod(call)

        names = [m for m in dir(ops) if not m.startswith("_") and callable(getattr(ops, m))]
        return type(ops.__name__, (ops,), {m: kernel(getattr(ops, m)) for m in names})

    def __enter__(self) -> TensorPeak:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
