"""Development tooling: the demo, local servers, the in-process daemon, sample photos.

Used by ``make demo``, the tests and the benchmarks; never shipped in the wheel or the image.
"""
