#include "model/llama.h"

#include <cmath>

#include "core/assert.h"

namespace meridian::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto dtype = x.scalar_type();
  const bool widen = dtype == torch::kBFloat16 || dtype == torch::kHalf;
  torch::Tensor h = widen ? x.to(torch::kFloat) : x;
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * (widen ? h.to(dtype) : h);
}

RopeTables make_rope_tables(int64_t max_seq_len, int64_t head_dim, double theta) {
  MERIDIAN_ASSERT(head_dim % 2 == 0, "head_dim={}", head_dim);
  // inv_freq in float64 then cast, so the tables do not depend on float32 pow rounding.
  auto i = torch::arange(0, head_dim, 2, torch::kFloat64);
  auto inv_freq = torch::pow(theta, -i / static_cast<double>(head_dim));  // [D/2]
  auto t = torch::arange(max_seq_len, torch::kFloat64);
  auto angles = torch::outer(t, inv_freq);                // [T_max, D/2]
  auto emb = torch::cat({angles, angles}, -1);            // [T_max, D]
  return {emb.cos().to(torch::kFloat), emb.sin().to(torch::kFloat)};
}

namespace {
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  return torch::cat({-x2, x1}, -1);
}
}  // namespace

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope) {
  const int64_t T = x.size(-2);
  MERIDIAN_ASSERT(T <= rope.cos.size(0), "sequence of {} tokens exceeds the RoPE table ({})", T, rope.cos.size(0));
  auto cos = rope.cos.narrow(0, 0, T).to(x.scalar_type());  // [T, D], broadcasts over [B, H]
  auto sin = rope.sin.narrow(0, 0, T).to(x.scalar_type());
  return x * cos + rotate_half(x) * sin;
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
#else
  const int64_t T = q.size(-2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;  // [B, H, T, T]
  auto mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  // Half-precision scores are normalised in fp32; fp32 and fp64 keep their own precision.
  const bool widen = q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kHalf;
  auto probs = widen ? torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type()) : torch::softmax(scores, -1);
  return torch::matmul(probs, v);  // [B, H, T, D]
#endif
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads_(c.n_heads), n_kv_heads_(c.n_kv_heads), head_dim_(c.head_dim()) {
  auto linear = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  q_proj = register_module("q_proj", linear(c.dim, n_heads_ * head_dim_));
  k_proj = register_module("k_proj", linear(c.dim, n_kv_heads_ * head_dim_));
  v_proj = register_module("v_proj", linear(c.dim, n_kv_heads_ * head_dim_));
  o_proj = register_module("o_proj", linear(n_heads_ * head_dim_, c.dim));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RopeTables& rope) {
  const int64_t B = x.size(0), T = x.size(1);
  // One GEMM for q, k and v (x is read once); the parameters stay separate, under their Hugging
  // Face names, and autograd splits the gradient of the concatenation back onto them.
  auto w_qkv = torch::cat({q_proj->weight, k_proj->weight, v_proj->weight}, 0);  // [(H + 2 Hkv) D, C]
  auto qkv = torch::nn::functional::linear(x, w_qkv);                            // [B, T, (H + 2 Hkv) D]
  auto parts = qkv.split_with_sizes({n_heads_ * head_dim_, n_kv_heads_ * head_dim_, n_kv_heads_ * head_dim_}, -1);
  auto q = parts[0].reshape({B, T, n_heads_, head_dim_}).transpose(1, 2);     // [B, H, T, D]
  auto k = parts[1].reshape({B, T, n_kv_heads_, head_dim_}).transpose(1, 2);  // [B, Hkv, T, D]
  auto v = parts[2].reshape({B, T, n_kv_heads_, head_dim_}).transpose(1, 2);  // [B, Hkv, T, D]
  q = apply_rope(q, rope);
  k = apply_rope(k, rope);
  if (n_kv_heads_ != n_heads_) {
    // Key/value head j serves query heads j*rep .. (j+1)*rep-1 (Hugging Face's repeat_kv).
    const int64_t rep = n_heads_ / n_kv_heads_;
    k = k.unsqueeze(2).expand({B, n_kv_heads_, rep, T, head_dim_}).reshape({B, n_heads_, T, head_dim_});
    v = v.unsqueeze(2).expand({B, n_kv_heads_, rep, T, head_dim_}).reshape({B, n_heads_, T, head_dim_});
  }
  auto y = causal_attention(q, k, v);                                        // [B, H, T, D]
  return o_proj(y.transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));  // [B, T, C]
}

MlpImpl::MlpImpl(int64_t dim, int64_t ffn_dim) {
  auto linear = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  gate_proj = register_module("gate_proj", linear(dim, ffn_dim));
  up_proj = register_module("up_proj", linear(dim, ffn_dim));
  down_proj = register_module("down_proj", linear(ffn_dim, dim));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  // gate and up in one GEMM, as for q/k/v above.
  const int64_t F = gate_proj->weight.size(0);
  auto gate_up = torch::nn::functional::linear(x, torch::cat({gate_proj->weight, up_proj->weight}, 0));  // [..., 2F]
  auto halves = gate_up.split(F, -1);
  return down_proj(torch::silu(halves[0]) * halves[1]);
}

BlockImpl::BlockImpl(const ModelConfig& c) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.dim, c.norm_eps));
  self_attn = register_module("self_attn", Attention(c));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.dim, c.norm_eps));
  mlp = register_module("mlp", Mlp(c.dim, c.ffn_dim));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const RopeTables& rope) {
  auto h = x + self_attn(input_layernorm(x), rope);
  return h + mlp(post_attention_layernorm(h));
}

DecoderImpl::DecoderImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layers; ++i) layers->push_back(Block(c));
  norm = register_module("norm", RMSNorm(c.dim, c.norm_eps));
}

LlamaImpl::LlamaImpl(const ModelConfig& c) : config_(c) {
  model = register_module("model", Decoder(c));
  lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.dim, c.vocab_size).bias(false)));
  rope_ = make_rope_tables(c.max_seq_len, c.head_dim(), c.rope_theta);
  reset_parameters();
}

void LlamaImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    if (name.find("norm") != std::string::npos) item.value().fill_(1.0);
    else item.value().normal_(0.0, config_.init_std);
  }
}

torch::Tensor LlamaImpl::hidden(const torch::Tensor& tokens) {
  MERIDIAN_ASSERT(tokens.dim() == 2, "tokens must be [B, T], got {} dims", tokens.dim());
  if (rope_.cos.device() != tokens.device()) {
    rope_.cos = rope_.cos.to(tokens.device());
    rope_.sin = rope_.sin.to(tokens.device());
  }
  auto x = model->embed_tokens(tokens);  // [B, T, C]
  for (const auto& layer : *model->layers) x = layer->as<Block>()->forward(x, rope_);
  return model->norm(x);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& tokens) {
  auto logits = lm_head(hidden(tokens));  // [B, T, V]
  return logits.scalar_type() == torch::kFloat64 ? logits : logits.to(torch::kFloat);
}

LossParts lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, double z_loss_weight) {
  const int64_t V = logits.size(-1);
  auto flat = logits.reshape({-1, V});                      // [B*T, V]
  auto lse = torch::logsumexp(flat, -1);                    // [B*T]
  auto target_logit = flat.gather(1, targets.reshape({-1, 1})).squeeze(1);
  auto ce = (lse - target_logit).mean();
  auto z = lse.pow(2).mean();
  return {ce + z_loss_weight * z, ce, z};
}

}  // namespace meridian::model
