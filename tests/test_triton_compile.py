"""The Triton kernels compile for real GPUs (sm_80, sm_90), without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute but not that they
compile: it runs them as NumPy code. Here every kernel variant the backends launch (both
dtypes, every metric / merge mode) goes through Triton's full compiler down to a cubin for
an NVIDIA target, ahead of time. It runs in a subprocess because the kernels must be
decorated with the interpreter off, and ``tests/test_triton.py`` turns it on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

# Triton is only looked up here, not imported: importing it in this process would fix its
# interpreter mode before the kernels' tests (tests/test_triton.py, test_linear_gpu.py) set
# TRITON_INTERPRET, whichever order the files are collected in.
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("needs torch and triton", allow_module_level=True)

SCRIPT = textwrap.dedent("""
    import json, re, sys
    import triton
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception:
        print("NO_NVIDIA_BACKEND")
        sys.exit(0)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import importlib
    from dcpe_kernels import merge, pairwise, round as round_

    centroid = importlib.import_module("dcpe_kernels.centroid")
    pair_average = importlib.import_module("dcpe_kernels.pair_average")
    gram = importlib.import_module("dcpe_kernels.gram")

    arch = int(sys.argv[1])
    target = GPUTarget("cuda", arch, 32)
    done = []

    def build(fn, signature, constexprs, cfg):
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        options = {k: v for k, v in cfg.items() if not k.startswith("BLOCK")}
        kernel = triton.compile(src, target=target, options=options)
        assert len(kernel.asm["cubin"]) > 0
        done.append(fn.__name__)
        return kernel

    for dt in ("fp32", "fp64"):
        cfg = pairwise._launch_config(16384, on_cpu=False)
        for metric in (0, 1, 2):
            sig = {"x_ptr": f"*{dt}", "d_ptr": f"*{dt}", "nn_ptr": "*i64",
                   "nnd_ptr": f"*{dt}", "n": "i32", "dim": "i32", "ld": "i32",
                   "METRIC": "constexpr", "IS_F32": "constexpr", "BLOCK_M": "constexpr",
                   "BLOCK_N": "constexpr"}
            kernel = build(pairwise._pairwise_dist_rownn_kernel, sig,
                           {"METRIC": metric, "IS_F32": dt == "fp32",
                            "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}, cfg)
            # squares rounded before they are added, as in the cpu engine
            fmas = re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"])
            assert not fmas, ("pairwise", dt, metric, len(fmas))
        cfg = merge._launch_config(16384, on_cpu=False)
        for mode in (0, 1, 2):
            for counted in (False, True):
                sig = {"src_ptr": f"*{dt}", "ld_src": "i32", "dst_ptr": f"*{dt}",
                       "ld_dst": "i32", "p_ptr": "*i32", "q_ptr": "*i32",
                       "wp_ptr": f"*{dt}", "wq_ptr": f"*{dt}", "nn_ptr": "*i64",
                       "nnd_ptr": f"*{dt}", "n_new": "i32", "row0": "i32", "nrows": "i32",
                       "count_ptr": "*i64", "MODE": "constexpr", "COUNTED": "constexpr",
                       "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
                kernel = build(merge._merge_compact_rownn_kernel, sig,
                               {"MODE": mode, "COUNTED": counted, "BLOCK_M": cfg["BLOCK_M"],
                                "BLOCK_N": cfg["BLOCK_N"]}, cfg)
                # the weighted merge must not be contracted into fma (symmetric rounding)
                fmas = re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"])
                assert not fmas, (dt, mode, len(fmas))
        cfg = round_._launch_config(on_cpu=False)
        sig = {name: "*i64" for name in ("nn_ptr", "size_ptr", "rep_ptr", "ma_ptr", "mb_ptr",
                                         "ms_ptr", "size_out_ptr", "rep_out_ptr",
                                         "counts_ptr")}
        sig.update({name: f"*{dt}" for name in ("nnd_ptr", "hfix_ptr", "mh_ptr", "mhf_ptr",
                                                "wp_ptr", "wq_ptr", "hfix_out_ptr")})
        sig.update({"p_ptr": "*i32", "q_ptr": "*i32", "n": "i32", "m": "i32", "cap": "i32",
                    "check": "i32", "average": "i32", "prev_ptr": "*i64", "need": "i32",
                    "CHAINED": "constexpr", "BLOCK": "constexpr"})
        for chained in (False, True):
            kernel = build(round_._round_scan_oneblock_kernel, sig,
                           {"CHAINED": chained, "BLOCK": cfg["BLOCK"]}, cfg)
            # average-linkage weights are IEEE float64 quotients, as the cpu engine's
            ptx = kernel.asm["ptx"]
            assert re.findall(r"\\bdiv\\.rn\\.f64", ptx), dt
            assert not re.findall(r"\\b(?:div\\.approx|div\\.full)", ptx), dt

        # the matrix-free rounds' kernels (dcpe_kernels.linear)
        cfg = centroid._launch_config(on_cpu=False)
        blocks = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
        for mode, half in ((0, False), (1, False), (1, True)):
            sig = {"mu_ptr": f"*{dt}", "s2_ptr": f"*{dt}", "out_ptr": f"*{dt}",
                   "nn_ptr": "*i64", "n": "i32", "dim": "i32", "rows_ptr": "*i32",
                   "nrows": "i32", "MODE": "constexpr",
                   "HALF": "constexpr", "IS_F32": "constexpr", "BLOCK_M": "constexpr",
                   "BLOCK_N": "constexpr"}
            kernel = build(centroid._centroid_nn_tiled_kernel, sig,
                           {"MODE": mode, "HALF": half, "IS_F32": dt == "fp32", **blocks}, cfg)
            assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), (dt, mode)
        sig = {"mu_ptr": f"*{dt}", "s2_ptr": f"*{dt}", "rad_ptr": f"*{dt}", "tau_ptr": f"*{dt}",
               "n": "i32", "dim": "i32", "margin_ptr": f"*{dt}", "pa_ptr": "*i32",
               "pb_ptr": "*i32", "count_ptr": "*i64", "capacity": "i32", "rows_ptr": "*i32",
               "nrows": "i32", "needy_ptr": "*i8", "IS_F32": "constexpr",
               "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
        kernel = build(centroid._candidate_pairs_tiled_kernel, sig,
                       {"IS_F32": dt == "fp32", **blocks}, cfg)
        assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt
        # the same scans from tiles of the Gram matrix (float64 tiles and norms)
        cfg = gram._launch_config(on_cpu=False)
        blocks = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
        tile = {"g_ptr": "*fp64", "g_rs": "i64", "g_cs": "i64", "nrm_ptr": "*fp64",
                "gerr": "fp64", "s2_ptr": f"*{dt}"}
        sig = {**tile, "out_ptr": f"*{dt}", "nn_ptr": "*i64", "n": "i32", "c0": "i32",
               "c1": "i32", "rows_ptr": "*i32", "nrows": "i32", "BLOCK_M": "constexpr",
               "BLOCK_N": "constexpr"}
        kernel = build(gram._centroid_nn_gram_kernel, sig, blocks, cfg)
        assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt
        sig = {**tile, "rad_ptr": f"*{dt}", "tau_ptr": f"*{dt}", "n": "i32", "c0": "i32",
               "c1": "i32", "margin_ptr": f"*{dt}", "pa_ptr": "*i32", "pb_ptr": "*i32",
               "count_ptr": "*i64", "capacity": "i32", "rows_ptr": "*i32", "nrows": "i32",
               "needy_ptr": "*i8", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
        kernel = build(gram._candidate_pairs_gram_kernel, sig, blocks, cfg)
        assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt
        cfg = pair_average._launch_config(on_cpu=False)
        sig = {"x_ptr": f"*{dt}", "dim": "i32", "ts": "i32", "cs": "i32", "off_ptr": "*i64",
               "size_ptr": "*i64", "pa_ptr": "*i32", "pb_ptr": "*i32", "count_ptr": "*i64",
               "capacity": "i32", "val_ptr": f"*{dt}", "work_lo": "i64", "work_hi": "i64",
               "IS_F32": "constexpr", "BLOCK_I": "constexpr", "BLOCK_J": "constexpr"}
        for _, bi, bj, _, warps in cfg["TILED"]:
            kernel = build(pair_average._pair_average_tiled_kernel, sig,
                           {"IS_F32": dt == "fp32", "BLOCK_I": bi, "BLOCK_J": bj},
                           {"num_warps": warps, "enable_fp_fusion": False})
            assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt
        sig = {k: v for k, v in sig.items() if k not in ("BLOCK_I", "BLOCK_J")}
        sig.update({"BLOCK_P": "constexpr", "BLOCK_E": "constexpr"})
        for _, per, lanes, _, warps in cfg["PACKED"]:
            kernel = build(pair_average._pair_average_packed_kernel, sig,
                           {"IS_F32": dt == "fp32", "BLOCK_P": per, "BLOCK_E": lanes},
                           {"num_warps": warps, "enable_fp_fusion": False})
            assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt
        sig = {"x_ptr": f"*{dt}", "dim": "i32", "ts": "i32", "cs": "i32", "off_ptr": "*i64",
               "size_ptr": "*i64", "n": "i32", "out_ptr": f"*{dt}", "ld": "i32",
               "nn_ptr": "*i64", "nnd_ptr": f"*{dt}", "IS_F32": "constexpr",
               "BLOCK_B": "constexpr"}
        kernel = build(pair_average._cluster_matrix_rowlanes_kernel, sig,
                       {"IS_F32": dt == "fp32", "BLOCK_B": cfg["BLOCK_B"]},
                       {"num_warps": cfg["num_warps"], "enable_fp_fusion": False})
        assert not re.findall(r"\\bfma\\.rn\\.f(?:32|64)", kernel.asm["ptx"]), dt

    # Sizes change from round to round; a kernel specialised on them (divisibility by 16,
    # value 1) would be compiled again for new sizes in the middle of a run. Every integer
    # argument is exempt, so each kernel compiles once per dtype and constexpr set.
    for fn in (pairwise._pairwise_dist_rownn_kernel, merge._merge_compact_rownn_kernel,
               round_._round_scan_oneblock_kernel, centroid._centroid_nn_tiled_kernel,
               centroid._candidate_pairs_tiled_kernel, pair_average._pair_average_tiled_kernel,
               pair_average._pair_average_packed_kernel,
               pair_average._cluster_matrix_rowlanes_kernel, gram._centroid_nn_gram_kernel,
               gram._candidate_pairs_gram_kernel):
        exempt = {fn.arg_names.index(a) if isinstance(a, str) else int(a)
                  for a in fn.do_not_specialize}
        ints = [i for i, name in enumerate(fn.arg_names)
                if not name.endswith("_ptr") and not fn.params[i].is_constexpr]
        assert ints and set(ints) <= exempt, (fn.__name__, ints, sorted(exempt))
    print(json.dumps(done))
""")


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_nvidia_gpus(arch: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of the Triton versions used
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(arch)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = proc.stdout.strip().splitlines()[-1]
    if built == "NO_NVIDIA_BACKEND":
        pytest.skip("Triton without its NVIDIA backend")
    assert built.count("_pairwise_dist_rownn_kernel") == 6
    assert built.count("_merge_compact_rownn_kernel") == 12
    assert built.count("_round_scan_oneblock_kernel") == 4
    assert built.count("_centroid_nn_tiled_kernel") == 6
    assert built.count("_candidate_pairs_tiled_kernel") == 2
    assert built.count("_pair_average_tiled_kernel") == 6
    assert built.count("_pair_average_packed_kernel") == 4
    assert built.count("_cluster_matrix_rowlanes_kernel") == 2
