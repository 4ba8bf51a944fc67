"""The package's one compiled part: cargohold.encryption._gcm_runs, AES-256-GCM over whole
runs of 4 KiB blocks through the system's OpenSSL (libcrypto; Debian: gcc, libssl-dev).
Optional: without a C compiler or OpenSSL's headers the install goes on without it, and
the block cipher uses its pure-Python loop (docs/encryption.md, "Cost"). Everything else
about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cargohold.encryption._gcm_runs",
            sources=["cargohold/encryption/_gcm_runs.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
