"""Unit constants. Everything inside memslo is SI (seconds, bytes, bytes/s, FLOP/s); convert only at the edges."""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
TFLOPS = 1e12
US = 1e-6  # one microsecond in seconds
MS = 1e-3  # one millisecond in seconds
