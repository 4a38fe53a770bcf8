#include "train/schedule.h"

#include <cmath>

namespace meridian::train {

double wsd_lr(const TrainConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step <= c.warmup_steps) return c.lr * static_cast<double>(step) / static_cast<double>(c.warmup_steps);
  const int64_t decay_steps = static_cast<int64_t>(std::llround(c.decay_fraction * static_cast<double>(c.steps)));
  const int64_t decay_start = c.steps - decay_steps;
  if (decay_steps <= 0 || step <= decay_start) return c.lr;
  const double p = std::min(1.0, static_cast<double>(step - decay_start) / static_cast<double>(decay_steps));
  double f;
  if (c.decay == "linear") f = 1.0 - p;
  else if (c.decay == "cosine") f = 0.5 * (1.0 + std::cos(M_PI * p));
  else f = 1.0 - std::sqrt(p);
  return c.min_lr + (c.lr - c.min_lr) * f;
}

}  // namespace meridian::train
