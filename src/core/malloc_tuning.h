// Process-wide glibc malloc settings for a process that streams an all-reduce: call once at the
// top of main(), before other threads start.
#pragma once

namespace meridian {

// Keeps up to 64 MiB of freed heap instead of handing it back to the kernel at once, and serves
// blocks below 32 MiB from the heap: the values glibc's own adaptive thresholds settle on after
// a large free, fixed from the start. Without it the all-reduce's 64 KiB frames, allocated and
// freed by the thousand per operation, make the heap shrink and grow again, and every regrowth
// faults its pages in afresh (1-2% of a 64 MiB all-reduce's time on a shaped 1 Gbit/s link,
// docs/algorithms.md "Efficiency on shaped links"). Larger blocks are still mapped and unmapped.
void keep_freed_heap_memory();

}  // namespace meridian
