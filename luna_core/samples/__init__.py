"""Generated sample libraries for the demo, the tests and the benchmarks."""

from luna_core.samples.sample_library import SampleFile, SampleLibrary, make_sample_library

__all__ = ["SampleFile", "SampleLibrary", "make_sample_library"]
