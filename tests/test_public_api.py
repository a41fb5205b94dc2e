from __future__ import annotations

import subprocess
import sys

import ocstream
import ocstream.transport


def test_every_exported_name_exists_and_nothing_public_is_missing() -> None:
    for module in (ocstream, ocstream.transport):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is exported but missing"
    assert {"TopicWriter", "build_app", "Settings", "EmbeddedRedis"} <= set(ocstream.__all__)
    assert issubclass(
        ocstream.EmbeddedRedis.__init__.__globals__["EmbeddedRedisError"], ocstream.OcstreamError
    )


def test_importing_the_package_loads_neither_faust_nor_aiohttp() -> None:
    """``ocstream --help`` answers fast because the package imports lazily (ocstream/_lazy.py):
    the public names resolve on first use, not at ``import ocstream``."""
    code = (
        "import sys, ocstream, ocstream.transport; "
        "print(sorted(m for m in ('faust', 'aiohttp', 'redis') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
