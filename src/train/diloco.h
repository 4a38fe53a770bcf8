// DiLoCo's outer loop (DESIGN.md section 2), the part that does not depend on the network:
// the fp32 outer parameters theta, the pseudo-gradient, and the outer Nesterov step.
//
// Per round, with theta identical on every node:
//   start: model <- theta
//   H inner AdamW steps (the trainer's train_step; inner state kept across rounds)
//   delta   = theta - model                        (pseudo_gradient(), fp32, flat)
//   delta   = mean over nodes of delta             (a PseudoGradientReducer)
//   m       = mu * m + delta                       (step())
//   theta   = theta - lr_outer * (delta + mu * m)  (Nesterov in PyTorch's SGD convention)
//   model  <- theta
// With one node and no reducer this is Lookahead with a Nesterov outer step.
// Flat layout: the parameters in the model's named_parameters() order, each flattened, back
// to back; that is the buffer the all-reduce moves.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <string>

#include "core/status.h"
#include "train/optimizer.h"

namespace meridian::train {

// Averages a flat fp32 buffer across the nodes of a round; every node must end with the same
// bytes. The comms layer implements it over the network; LocalReducer is the world of one.
class PseudoGradientReducer {
 public:
  virtual ~PseudoGradientReducer() = default;
  virtual Status all_reduce_mean(float* data, size_t count) = 0;
  virtual int world_size() const = 0;
};

class LocalReducer final : public PseudoGradientReducer {
 public:
  Status all_reduce_mean(float*, size_t) override { return Status::ok(); }
  int world_size() const override { return 1; }
};

struct OuterOptions {
  double lr = 0.7;
  double momentum = 0.9;
};

class OuterOptimizer {
 public:
  // theta starts as an fp32 copy of the parameters; the momentum at zero.
  OuterOptimizer(NamedTensors params, OuterOptions options);

  int64_t numel() const { return theta_.numel(); }
  // theta - params, flattened (f32 [N]); the returned tensor is a reused buffer.
  torch::Tensor pseudo_gradient();
  // The outer Nesterov step with the averaged pseudo-gradient (f32 [N]), then params <- theta.
  void step(const torch::Tensor& delta_mean);
  // params <- theta (casting to the parameters' dtype).
  void copy_theta_to_params();
  int64_t rounds() const { return rounds_; }

  // "outer.theta" and "outer.momentum", both f32 [N].
  NamedTensors state() const;
  std::string load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t rounds);

 private:
  std::vector<torch::Tensor> params_;
  OuterOptions options_;
  torch::Tensor theta_;     // f32 [N]
  torch::Tensor momentum_;  // f32 [N]
  torch::Tensor delta_;     // f32 [N], scratch for pseudo_gradient()
  int64_t rounds_ = 0;
};

}  // namespace meridian::train
