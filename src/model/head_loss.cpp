// chunked_lm_loss (llama.h): the head's matmul, the cross-entropy and the z-loss over row
// chunks of the flattened [B*T, C] hidden states, as one autograd node.
//
// Per token n with logits l = W h_n, lse_n = log sum_v exp(l_v), p = softmax(l):
//   ce = mean_n (lse_n - l[t_n]),  z = mean_n lse_n^2,  total = ce + w z
//   d total / d l = (p - onehot(t_n)) / N + w * 2 lse_n p / N
// With upstream gradients g_total, g_ce, g_z: dl = a (p - onehot) + b lse_n p, where
// a = (g_total + g_ce) / N and b = 2 (w g_total + g_z) / N; then dh_n = dl W, dW += dl^T h_n.
// The forward keeps lse (N values) for the backward, which recomputes each chunk's logits.
#include <torch/torch.h>

#include "core/assert.h"
#include "model/llama.h"

namespace meridian::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class HeadLoss : public torch::autograd::Function<HeadLoss> {
 public:
  // hidden [N, C], weight [V, C], targets i64 [N] -> {total, ce, z}.
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& weight,
                               const torch::Tensor& targets, double z_loss_weight, int64_t chunk, int64_t compute) {
    const auto cdtype = static_cast<torch::ScalarType>(compute);
    const auto acc = accumulate_dtype(hidden);
    const int64_t n = hidden.size(0);
    const torch::Tensor w = weight.to(cdtype);
    torch::Tensor lse_all = torch::empty({n}, hidden.options().dtype(acc));
    torch::Tensor ce_sum = torch::zeros({}, hidden.options().dtype(acc));
    torch::Tensor z_sum = torch::zeros({}, hidden.options().dtype(acc));
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t len = std::min(chunk, n - s);
      const torch::Tensor logits = torch::matmul(hidden.narrow(0, s, len).to(cdtype), w.t()).to(acc);  // [len, V]
      const torch::Tensor lse = torch::logsumexp(logits, 1);
      const torch::Tensor target_logit = logits.gather(1, targets.narrow(0, s, len).unsqueeze(1)).squeeze(1);
      ce_sum += (lse - target_logit).sum();
      z_sum += lse.pow(2).sum();
      lse_all.narrow(0, s, len).copy_(lse);
    }
    const torch::Tensor ce = ce_sum / static_cast<double>(n);
    const torch::Tensor z = z_sum / static_cast<double>(n);
    ctx->save_for_backward({hidden, weight, targets, lse_all});
    ctx->saved_data["z_loss_weight"] = z_loss_weight;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["compute"] = compute;
    return {ce + z_loss_weight * z, ce, z};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& hidden = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& targets = saved[2];
    const torch::Tensor& lse_all = saved[3];
    const double zw = ctx->saved_data["z_loss_weight"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto cdtype = static_cast<torch::ScalarType>(ctx->saved_data["compute"].toInt());
    const auto acc = lse_all.scalar_type();
    const int64_t n = hidden.size(0);
    auto upstream = [&](size_t i) {
      return grads[i].defined() ? grads[i].to(acc) : torch::zeros({}, lse_all.options());
    };
    const torch::Tensor g_total = upstream(0), g_ce = upstream(1), g_z = upstream(2);
    const torch::Tensor a = (g_total + g_ce) / static_cast<double>(n);
    const torch::Tensor b = 2.0 * (zw * g_total + g_z) / static_cast<double>(n);
    const torch::Tensor w = weight.to(cdtype);
    torch::Tensor grad_hidden = torch::empty_like(hidden);
    torch::Tensor grad_weight = torch::zeros(weight.sizes(), weight.options().dtype(acc));
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t len = std::min(chunk, n - s);
      const torch::Tensor h = hidden.narrow(0, s, len).to(cdtype);
      const torch::Tensor lse = lse_all.narrow(0, s, len).unsqueeze(1);   // [len, 1]
      torch::Tensor dl = torch::matmul(h, w.t()).to(acc).sub_(lse).exp_();  // p
      dl.mul_(a + b * lse);
      dl.scatter_add_(1, targets.narrow(0, s, len).unsqueeze(1), (-a).expand({len, 1}).contiguous());
      const torch::Tensor dlc = dl.to(cdtype);
      grad_hidden.narrow(0, s, len).copy_(torch::matmul(dlc, w));
      grad_weight += torch::matmul(dlc.t(), h).to(acc);
    }
    return {grad_hidden, grad_weight.to(weight.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }

 private:
  static torch::ScalarType accumulate_dtype(const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  }
};

}  // namespace

LossParts chunked_lm_loss(const torch::Tensor& hidden, const torch::Tensor& head_weight, const torch::Tensor& targets,
                          double z_loss_weight, int64_t chunk_tokens, std::optional<torch::ScalarType> compute) {
  MERIDIAN_ASSERT(hidden.dim() == 3 && targets.dim() == 2, "hidden must be [B, T, C] and targets [B, T]");
  MERIDIAN_ASSERT(head_weight.dim() == 2 && head_weight.size(1) == hidden.size(2), "head weight must be [V, C]");
  MERIDIAN_ASSERT(chunk_tokens > 0, "chunk_tokens must be > 0, got {}", chunk_tokens);
  const int64_t C = hidden.size(2);
  const variable_list out =
      HeadLoss::apply(hidden.reshape({-1, C}), head_weight, targets.reshape({-1}), z_loss_weight, chunk_tokens,
                      static_cast<int64_t>(compute.value_or(hidden.scalar_type())));
  return {out[0], out[1], out[2]};
}

}  // namespace meridian::model
