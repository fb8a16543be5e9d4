"""dcpe_kernels.peak: the count of the tensors an engine makes (the budgets' tests and
``benchmarks/linear_work.py --memory`` rest on it)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dcpe_kernels.peak import TensorPeak, sort_workspace  # noqa: E402
from dcpe_kernels.rnn import allocator_bytes, blas_workspace_bytes  # noqa: E402

MIB = 1 << 20


def test_outputs_counted_views_and_in_place_not_and_the_dead_dropped() -> None:
    x = torch.zeros(1000, dtype=torch.float64)  # made outside: not counted
    with TensorPeak() as t:
        a = x + 1  # 8,000 bytes
        b = a[10:20]  # a view
        a.mul_(2)  # in place
        del b
        c = torch.ones(3000, dtype=torch.float64)  # 24,000 bytes, with a alive
        del a
        d = torch.ones(500, dtype=torch.int32)  # 2,000 bytes, a gone
    assert t.peak == 8000 + 24000
    assert t.now == 24000 + 2000
    assert t.device_peak == allocator_bytes(8000) + allocator_bytes(24000)
    del c, d


def test_device_count_rounds_as_the_caching_allocator_may() -> None:
    with TensorPeak() as t:
        big = torch.empty(1_500_000, dtype=torch.uint8)
        small = torch.empty(1000, dtype=torch.uint8)
    assert t.peak == 1_501_000
    assert t.device_peak == (1_500_160 + MIB) + 1024
    del big, small


def test_sort_workspace_while_it_runs() -> None:
    x = torch.arange(100_000, 0, -1)
    with TensorPeak() as t:
        s, i = torch.sort(x)
    outputs = 2 * allocator_bytes(8 * 100_000)
    assert t.peak == 16 * 100_000
    assert t.device_peak == outputs + sort_workspace(100_000, 8)
    assert sort_workspace(100_000, 8) == allocator_bytes(800_000) + allocator_bytes(1_600_000)
    with TensorPeak() as t:  # along the last dimension, each row a sort of its own
        torch.sort(x.view(10, 10_000), dim=1)
        torch.argsort(x[:4096])  # in place, in one block
    assert t.device_peak == outputs + 10 * sort_workspace(10_000, 8)
    v = x.double()
    for is_sorted, extra in ((True, sort_workspace(9000, 8)), (False, 0)):
        with TensorPeak() as t:
            torch.topk(v, 9000, largest=False, sorted=is_sorted)
        assert t.device_peak == 2 * allocator_bytes(72_000) + extra
    del s, i


def test_kernel_returns_counted_not_its_temporaries() -> None:
    class Ops:
        @staticmethod
        def kernel(n: int) -> torch.Tensor:
            scratch = torch.ones(10 * n)  # a reference's temporaries: not counted
            return scratch[:n].clone()

    with TensorPeak() as t:
        out = t.ops(Ops).kernel(1000)
    assert t.peak == 4000 and t.device_peak == allocator_bytes(4000)
    del out


def test_blas_workspace_from_the_first_product_on() -> None:
    """``TensorPeak(blas_workspace=...)``: the first matrix product outside a wrapped kernel
    adds the workspace to ``device_peak`` for good (once), as PyTorch keeps cuBLAS's."""
    ws = 3 * MIB
    a = torch.ones(64, 64, dtype=torch.float64)

    class Ops:
        @staticmethod
        def kernel(m: torch.Tensor) -> torch.Tensor:
            return torch.mm(m, m)  # a device kernel calls no cuBLAS

    with TensorPeak(blas_workspace=ws) as t:
        b = a + 1
        before = t.device_peak
        t.ops(Ops).kernel(a)
        assert t.device_peak == before + allocator_bytes(a.nbytes)
        c = torch.mm(b, a)
        d = b @ a
        del b, c, d
        e = torch.ones(10)
    assert before == allocator_bytes(a.nbytes)
    assert t.device_peak == 3 * allocator_bytes(a.nbytes) + ws  # b, c, d and the workspace
    assert t.device_now == allocator_bytes(40) + ws  # e, and the workspace kept
    assert t.peak == 3 * a.nbytes  # tensors only
    with TensorPeak() as t:  # none by default
        torch.mm(a, a)
    assert t.device_peak == allocator_bytes(a.nbytes)
    del e


def test_blas_workspace_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuBLAS's workspace as PyTorch sizes it: ``CUBLAS_WORKSPACE_CONFIG`` (``:KiB:COUNT``
    pairs, summed) or 4096 KiB x 8; none off CUDA."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert blas_workspace_bytes(None) == blas_workspace_bytes("cpu") == 0
    assert blas_workspace_bytes(torch.device("cuda")) == allocator_bytes(32 * MIB)
    assert blas_workspace_bytes("cuda:1") == 33 * MIB
    for config, size in ((":4096:8", 32 * MIB), (":16:8", 128 << 10),
                         (":4096:2:16:8", 8 * MIB + (128 << 10)), ("junk", 32 * MIB),
                         (":0:4", 0)):
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", config)
        assert blas_workspace_bytes("cuda") == allocator_bytes(size), config
