"""Build script: setuptools drives CMake, which builds the single extension ``dcpe._C``.

Environment knobs
-----------------
DCPE_SKIP_CUDA=1      do not compile the CUDA sources even when ``nvcc`` is found.
DCPE_CUDA_ARCHS=...   CMAKE_CUDA_ARCHITECTURES (default: "80;90").
DCPE_NATIVE=0         build the CPU engine for a generic x86-64/aarch64 instead of -march=native.
DCPE_BUILD_TYPE=...   CMake build type (default: Release).
DCPE_BUILD_JOBS=N     parallel build jobs (default: number of cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "python" / "dcpe" / "_version.py").read_text()
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if match is None:
        raise RuntimeError("cannot find __version__ in python/dcpe/_version.py")
    return match.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        ext_fullpath = Path.cwd() / self.get_ext_fullpath(ext.name)
        extdir = ext_fullpath.parent.resolve()
        build_type = os.environ.get("DCPE_BUILD_TYPE", "Release")
        import pybind11

        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DDCPE_VERSION={self.distribution.get_version()}",
        ]
        if os.environ.get("DCPE_SKIP_CUDA", "0") not in ("", "0"):
            cmake_args.append("-DDCPE_WITH_CUDA=OFF")
        if os.environ.get("DCPE_NATIVE", "1") in ("0", ""):
            cmake_args.append("-DDCPE_NATIVE=OFF")
        if "DCPE_CUDA_ARCHS" in os.environ:
            cmake_args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['DCPE_CUDA_ARCHS']}")
        jobs = os.environ.get("DCPE_BUILD_JOBS", str(os.cpu_count() or 2))
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(
            ["cmake", "--build", ".", "--config", build_type, "-j", jobs],
            cwd=build_temp,
            check=True,
        )


setup(
    name="dcpe",
    version=read_version(),
    description="Exact average-linkage clustering of VQ tokenizer codebooks, CPU and GPU",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["dcpe", "dcpe.backends", "dcpe_kernels"],
    package_dir={"dcpe": "python/dcpe", "dcpe.backends": "python/dcpe/backends",
                 "dcpe_kernels": "dcpe_kernels"},
    package_data={"dcpe": ["data/*.npy"]},
    ext_modules=[CMakeExtension("dcpe._C", sourcedir=str(ROOT))],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy>=1.23", "torch>=2.1", "tqdm>=4.66"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "scipy>=1.10",
            "scikit-learn>=1.3",
            "safetensors>=0.4",
            "matplotlib>=3.6",
            "triton>=3.0",
        ],
        "bench": ["scipy>=1.10", "scikit-learn>=1.3", "fastcluster>=1.2"],
        "report": ["matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["dcpe=dcpe.cli:main"]},
    zip_safe=False,
)
