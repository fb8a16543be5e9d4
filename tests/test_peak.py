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


@pytest.mark.parametrize("var", ["PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"])
def test_allocator_settings(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``allocator_bytes`` under the allocator settings that change what a tensor may hold:
    ``roundup_power2_divisions`` (a number, or a list per size interval: its coarsest
    division counts), ``max_split_size_mb`` (a request of at least that size may take a
    cached block up to ``max_non_split_rounding_mb``, 20 MiB by default, larger);
    ``expandable_segments`` splits every block (the default bound holds); ``allocator_fit``
    stays the largest request whose count fits, under each."""
    from dcpe_kernels.rnn import allocator_fit

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    cases = {
        "expandable_segments:True": [(100, 512), (3000, 3072), (5 * MIB + 1, 6 * MIB + 512)],
        "roundup_power2_divisions:4": [
            (1200, 1536), (2048, 2048), (3000, 3072), (5000, 5120), (5 * MIB + 1, 7 * MIB),
            (4 * MIB, 5 * MIB), (600 * 1024, 640 * 1024)],
        "roundup_power2_divisions: [256:1, 512:2, >:4], expandable_segments:False": [
            (3 * MIB + 1, 5 * MIB), (5 * MIB + 1, 7 * MIB), (1500, 1536)],
        "max_split_size_mb:64": [
            (10 * MIB, 11 * MIB), (64 * MIB - 513, 65 * MIB - 512), (64 * MIB - 1, 84 * MIB),
            (100 * MIB + 1, 120 * MIB + 512), (1000, 1024)],
        "max_split_size_mb:64,max_non_split_rounding_mb:40": [(100 * MIB, 140 * MIB)],
        "garbage_collection_threshold:0.6,max_split_size_mb:128,roundup_power2_divisions:2": [
            (90 * MIB + 1, 97 * MIB), (100 * MIB + 1, 148 * MIB), (200 * MIB + 1, 276 * MIB)],
    }
    rooms = [0, 511, 512, MIB, 2 * MIB + 512, 64 * MIB, 84 * MIB, 300 * MIB]
    rooms += torch.randint(0, 300 * MIB, (40,), generator=torch.Generator().manual_seed(5)
                           ).tolist()
    for conf, expected in cases.items():
        monkeypatch.setenv(var, conf)
        assert [allocator_bytes(b) for b, _ in expected] == [c for _, c in expected], conf
        for room in rooms:
            fit = allocator_fit(room)
            assert fit % 512 == 0 and allocator_bytes(fit) <= room, (conf, room)
            assert allocator_bytes(fit + 512) > room, (conf, room)
