#include "core/malloc_tuning.h"

#include <malloc.h>

namespace meridian {

void keep_freed_heap_memory() {
#if defined(__GLIBC__)
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

}  // namespace meridian
