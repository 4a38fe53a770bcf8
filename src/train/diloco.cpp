#include "train/diloco.h"

#include <map>

#include "core/assert.h"
#include "io/checkpoint.h"

namespace meridian::train {

OuterOptimizer::OuterOptimizer(NamedTensors params, OuterOptions options) : options_(options) {
  int64_t n = 0;
  for (auto& [name, p] : params) {
    params_.push_back(p);
    n += p.numel();
  }
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(params_.empty() ? torch::kCPU : params_[0].device());
  theta_ = torch::empty({n}, f32);
  momentum_ = torch::zeros({n}, f32);
  delta_ = torch::empty({n}, f32);
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    theta_.narrow(0, offset, p.numel()).copy_(p.detach().reshape({-1}));
    offset += p.numel();
  }
}

torch::Tensor OuterOptimizer::pseudo_gradient_from(const torch::Tensor& start) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    const int64_t n = p.numel();
    // delta = start - params, in fp32 whatever the parameters' dtype.
    torch::Tensor out = delta_.narrow(0, offset, n);
    torch::sub_out(out, start.narrow(0, offset, n), p.detach().reshape({-1}).to(torch::kFloat));
    offset += n;
  }
  return delta_;
}

void OuterOptimizer::step(const torch::Tensor& delta_mean) {
  apply(delta_mean);
  copy_theta_to_params();
}

void OuterOptimizer::apply(const torch::Tensor& delta_mean) {
  MERIDIAN_ASSERT(delta_mean.numel() == theta_.numel(), "pseudo-gradient of {} values for {} parameters", delta_mean.numel(), theta_.numel());
  torch::NoGradGuard no_grad;
  const auto& delta = delta_mean.scalar_type() == torch::kFloat ? delta_mean : delta_mean.to(torch::kFloat);
  // PyTorch SGD(nesterov=True, dampening=0): buf = mu*buf + g; g = g + mu*buf; p -= lr*g.
  momentum_.mul_(options_.momentum).add_(delta);
  theta_.add_(delta.add(momentum_, options_.momentum), -options_.lr);
  ++rounds_;
}

void OuterOptimizer::overlap_start(const torch::Tensor& delta, bool eager, torch::Tensor& out) const {
  torch::NoGradGuard no_grad;
  const double lr = options_.lr, mu = options_.momentum;
  if (eager)
    torch::sub_out(out, theta_, (delta * (1.0 + mu) + momentum_ * (mu * mu)) * lr);
  else
    torch::sub_out(out, theta_, delta);
}

void OuterOptimizer::copy_to_params(const torch::Tensor& flat) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    p.copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
}

std::string OuterOptimizer::theta_hash() const { return io::tensors_hash({{"theta", theta_}}); }

NamedTensors OuterOptimizer::state() const { return {{"outer.theta", theta_}, {"outer.momentum", momentum_}}; }

std::string OuterOptimizer::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t rounds) {
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  torch::NoGradGuard no_grad;
  for (auto [name, target] : {std::pair{"outer.theta", &theta_}, std::pair{"outer.momentum", &momentum_}}) {
    auto it = by_name.find(name);
    if (it == by_name.end()) return std::string("state has no tensor '") + name + "' (saved without DiLoCo?)";
    if (it->second.numel() != target->numel())
      return std::string("tensor '") + name + "' has " + std::to_string(it->second.numel()) + " values, the model needs " + std::to_string(target->numel());
    target->copy_(it->second.reshape({-1}));
  }
  rounds_ = rounds;
  return "";
}

}  // namespace meridian::train
