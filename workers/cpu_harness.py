"""A timing loop compiled into every CPU kernel's library, so a timed call costs no Python.

Calling a kernel through ctypes adds about a microsecond per call, which is a large part of
a small kernel's time. The builder appends `tunefleet_time_calls` to each C translation
unit: it runs the kernel `calls` times, rotating through input sets, and returns the elapsed
nanoseconds from CLOCK_MONOTONIC. The kernel is called through a volatile function pointer
so the compiler cannot inline it and merge or drop repeated calls.
"""

from __future__ import annotations

from tunefleet.ir.codegen import KernelSource

TIMER_SYMBOL = "tunefleet_time_calls"
HARNESS_VERSION = "|harness1"  # part of the cache key: bump when the loop below changes


def harness_source(kernel: KernelSource) -> str:
    """C source of the timing loop for `kernel` (append it to the kernel's translation unit)."""
    buffers = [a for a in kernel.args if a.kind == "buffer"]
    call_args = []
    b_index = s_index = 0
    for arg in kernel.args:
        if arg.kind == "buffer":
            call_args.append(f"set[{b_index}]")
            b_index += 1
        else:
            call_args.append(f"scalars[{s_index}]")
            s_index += 1
    return f"""
/* ---- timing loop appended by tunefleet.workers ---- */
#include <stdint.h>
#include <time.h>
int64_t {TIMER_SYMBOL}(int64_t first, int64_t calls, int64_t n_sets, void** buffers,
                       const int64_t* scalars) {{
  __typeof__({kernel.entry}) *volatile kernel = {kernel.entry};
  struct timespec t0, t1;
  (void)scalars;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int64_t c = 0; c < calls; ++c) {{
    void** set = buffers + ((first + c) % n_sets) * {max(len(buffers), 1)};
    (void)set;
    kernel({", ".join(call_args)});
  }}
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
}}
"""
