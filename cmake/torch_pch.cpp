// Anchor of the shared precompiled libtorch header: torch targets REUSE_FROM this one, so
// <torch/torch.h> is parsed once per build instead of once per translation unit.
#include <torch/torch.h>
