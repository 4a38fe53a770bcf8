#include "train/optimizer.h"

#include <cmath>
#include <map>

namespace meridian::train {

AdamW::AdamW(NamedTensors params, AdamWOptions options) : options_(options) {
  for (auto& [name, p] : params) {
    slots_.push_back({name, p, torch::zeros_like(p, torch::MemoryFormat::Contiguous),
                      torch::zeros_like(p, torch::MemoryFormat::Contiguous)});
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step_));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step_)));
  const double step_size = lr / bias1;
  for (auto& s : slots_) {
    const auto& g = s.param.grad();
    if (!g.defined()) continue;
    if (options_.weight_decay != 0) s.param.mul_(1.0 - lr * options_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    auto denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(options_.eps);
    s.param.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_) {
    auto& g = s.param.mutable_grad();
    if (g.defined()) g.zero_();
  }
}

NamedTensors moment_of(const NamedTensors& state, const std::string& moment) {
  NamedTensors out;
  for (const auto& [name, t] : state)
    if (name.rfind(moment, 0) == 0) out.emplace_back(name.substr(moment.size()), t);
  return out;
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (const auto& s : slots_) out.emplace_back("exp_avg." + s.name, s.exp_avg);
  for (const auto& s : slots_) out.emplace_back("exp_avg_sq." + s.name, s.exp_avg_sq);
  return out;
}

std::string AdamW::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t step) {
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  torch::NoGradGuard no_grad;
  for (auto& s : slots_) {
    for (auto* pair : {&s.exp_avg, &s.exp_avg_sq}) {
      const std::string name = (pair == &s.exp_avg ? "exp_avg." : "exp_avg_sq.") + s.name;
      auto it = by_name.find(name);
      if (it == by_name.end()) return "optimizer state has no tensor '" + name + "'";
      if (it->second.sizes() != pair->sizes())
        return "optimizer tensor '" + name + "' has shape " + c10::str(it->second.sizes()) + ", the model needs " + c10::str(pair->sizes());
      pair->copy_(it->second);
    }
  }
  step_ = step;
  return "";
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm, const std::function<double(double)>& sum_across) {
  torch::NoGradGuard no_grad;
  // Sum of squares in float64, so the norm does not depend on the parameters' dtype.
  std::vector<torch::Tensor> squares;
  for (const auto& p : params)
    if (p.grad().defined()) squares.push_back(p.grad().to(torch::kFloat64).pow(2).sum());
  const double local = squares.empty() ? 0.0 : torch::stack(squares).sum().item<double>();
  const double total = std::sqrt(sum_across ? sum_across(local) : local);
  if (max_norm > 0 && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace meridian::train
