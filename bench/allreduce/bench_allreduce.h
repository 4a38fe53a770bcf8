// The all-reduce / state-sync / topology benchmark as a function, so that both the standalone
// bench_allreduce binary and `meridian bench allreduce` run it. argv[0] is a program name; the
// options are those documented at the top of bench_allreduce.cpp. Returns the exit status.
#pragma once

int run_allreduce_bench(int argc, char** argv);
