// The inner optimizer: AdamW with decoupled weight decay (Loshchilov & Hutter), written out so
// that its state is plain named tensors that checkpoints and the DiLoCo state sync can carry
// bit-exactly. The update is torch.optim.AdamW's (non-amsgrad) in the same operation order:
//   p    <- p * (1 - lr * wd)
//   m    <- b1 * m + (1 - b1) * g
//   v    <- b2 * v + (1 - b2) * g^2
//   p    <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Also global-norm gradient clipping.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace meridian::train {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// The tensors of one moment of AdamW::state() ("exp_avg." or "exp_avg_sq."), under the
// parameters' names (the prefix taken off).
NamedTensors moment_of(const NamedTensors& state, const std::string& moment);

class AdamW {
 public:
  AdamW(NamedTensors params, AdamWOptions options);
  // One update with learning rate lr from the parameters' .grad(); parameters without a
  // gradient are skipped. Increments step_count().
  void step(double lr);
  void zero_grad();
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step) { step_ = step; }

  // "exp_avg.<param>" and "exp_avg_sq.<param>" for every parameter (views of the live state).
  NamedTensors state() const;
  // Copies a state produced by state() back in; errors name any missing tensor or shape mismatch.
  std::string load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t step);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param;
    torch::Tensor exp_avg;     // same shape and dtype as param
    torch::Tensor exp_avg_sq;  // same shape and dtype as param
  };
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm (no-op when max_norm
// is 0). Returns the norm before clipping. With `sum_across`, the gradients are this rank's
// shards and it sums the squared norm over the ranks (train/fsdp.h).
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm,
                      const std::function<double(double)>& sum_across = {});

}  // namespace meridian::train
