"""Example dataflows, outside the production graph of :mod:`topology`.

A worker runs one only when ``OCSTREAM_DATAFLOW`` names it (``demo``, or ``xcm,demo`` next to
the XCM part); they are importable from the repository's root (they are not installed with the
package). ``docs/testing.md`` says which tests and benchmarks use them.
"""
