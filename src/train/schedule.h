// The WSD learning-rate schedule (warmup, stable, decay), as INTELLECT-1 used it:
//   step s in 1..N, warmup W, decay steps K = round(decay_fraction * N), decay start S = N - K
//   s <= W:       lr * s / W
//   s <= S:       lr
//   otherwise:    min_lr + (lr - min_lr) * f(p),  p = (s - S) / K in (0, 1]
//                 f = 1 - p (linear) | (1 + cos(pi p)) / 2 (cosine) | 1 - sqrt(p) (sqrt)
#pragma once

#include <cstdint>

#include "config/config.h"

namespace meridian::train {

double wsd_lr(const TrainConfig& config, int64_t step);

}  // namespace meridian::train
