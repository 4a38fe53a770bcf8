// Standalone entry of the all-reduce benchmark (see bench_allreduce.cpp for the options).
#include "bench_allreduce.h"
#include "core/malloc_tuning.h"

int main(int argc, char** argv) {
  meridian::keep_freed_heap_memory();  // as the meridian binary does
  return run_allreduce_bench(argc, argv);
}
