from __future__ import annotations

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
