"""Build of the optional native cell kernel (fieldcrypt._native); everything else is in pyproject.toml.

The extension is compiled when a C compiler and the OpenSSL 3 headers are present. If the
build fails, installation still succeeds with a warning and fieldcrypt uses its pure-Python
kernel (`fieldcrypt --version` says which kernel is active). Environment:
FIELDCRYPT_BUILD_NATIVE=0 skips the extension; =require makes a failed build an error.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BUILD = os.environ.get("FIELDCRYPT_BUILD_NATIVE", "1").strip().lower()


class OptionalBuildExt(build_ext):
    """build_ext that turns a compiler, header or linker failure into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure falls back to the Python kernel
            self._fall_back(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        if BUILD == "require":
            raise exc
        print(
            f"WARNING: fieldcrypt native kernel not built ({type(exc).__name__}: {exc}); "
            "the pure-Python kernel will be used. Install a C compiler and the OpenSSL 3 "
            "headers (Debian: gcc libssl-dev) and reinstall to build it.",
            file=sys.stderr,
        )


extensions = []
if BUILD != "0":
    extensions.append(
        Extension(
            "fieldcrypt._native",
            sources=["fieldcrypt/_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            define_macros=[("OPENSSL_API_COMPAT", "30000"), ("OPENSSL_NO_DEPRECATED", "1")],
        )
    )

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
