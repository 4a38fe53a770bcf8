// Standalone entry of the all-reduce benchmark (see bench_allreduce.cpp for the options).
#include "bench_allreduce.h"

int main(int argc, char** argv) { return run_allreduce_bench(argc, argv); }
