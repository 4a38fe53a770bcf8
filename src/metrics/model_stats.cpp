#include "metrics/model_stats.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace meridian::metrics {

ModelStats model_stats(const ModelConfig& m, int64_t seq_len) {
  const int64_t C = m.dim, D = m.head_dim(), kv = m.n_kv_heads * D;
  const int64_t attention = C * C /*q*/ + 2 * C * kv /*k, v*/ + C * C /*o*/;
  const int64_t mlp = 3 * C * m.ffn_dim;
  const int64_t norms = 2 * C;
  ModelStats s;
  s.params_per_layer = attention + mlp + norms;
  s.params_embedding = m.vocab_size * C;
  s.params_total = s.params_embedding + m.n_layers * s.params_per_layer + C /*final norm*/ + m.vocab_size * C /*lm_head*/;
  s.flops_per_token = 6.0 * static_cast<double>(s.params_total - s.params_embedding) +
                      12.0 * static_cast<double>(m.n_layers) * static_cast<double>(C) * static_cast<double>(seq_len);
  s.weight_bytes_fp32 = 4 * s.params_total;
  s.weight_bytes_bf16 = 2 * s.params_total;
  s.grad_bytes_fp32 = 4 * s.params_total;
  s.adamw_bytes_fp32 = 8 * s.params_total;
  return s;
}

HeadActivations head_activations(const ModelConfig& m, const TrainConfig& train) {
  HeadActivations h;
  h.tokens = train.batch_size * train.seq_len;
  h.chunk_tokens = train.loss_chunk_tokens > 0 ? std::min(train.loss_chunk_tokens, h.tokens) : h.tokens;
  h.logits_bytes = 4 * h.chunk_tokens * m.vocab_size;
  h.unchunked_bytes = 4 * h.tokens * m.vocab_size;
  return h;
}

RankPlan rank_plan(const ModelConfig& m, const TrainConfig& train, bool diloco) {
  const ModelStats s = model_stats(m, train.seq_len);
  const int64_t G = std::max<int64_t>(1, train.nproc_per_node);
  const int64_t root = 2 * m.vocab_size * m.dim + m.dim;
  auto shard = [&](int64_t n) { return (n + G - 1) / G; };  // a unit's shard, padded
  const int64_t shard_elems = G == 1 ? s.params_total : shard(root) + m.n_layers * shard(s.params_per_layer);
  RankPlan r;
  r.ranks = G;
  r.parameters = 4 * shard_elems;
  r.gradients = 4 * shard_elems;
  r.adamw_state = 8 * shard_elems;
  if (G > 1) {
    r.gathered_root = 12 * root;
    r.gathered_block = 12 * s.params_per_layer;
  }
  const int64_t a = train.bf16 ? 2 : 4;
  const int64_t BT = train.batch_size * train.seq_len, C = m.dim, kv = m.n_kv_heads * m.head_dim();
  // One block's saved tensors per token: the two norms' outputs, q, k, v, the attention output,
  // the residual, the MLP's gate, up, activation and product. Fused attention (libtorch >= 2's
  // scaled_dot_product_attention) keeps no T x T scores; 1.13's explicit softmax keeps two.
  const int64_t block = BT * (6 * C + 2 * kv + 4 * m.ffn_dim) * a;
  r.attention_scores_unfused = 2 * train.batch_size * m.n_heads * train.seq_len * train.seq_len * a;
  r.activations = G > 1 ? m.n_layers * BT * C * a + block : m.n_layers * block;
  r.head = 2 * head_activations(m, train).logits_bytes + 4 * BT * C;
  r.device_total = r.parameters + r.gradients + r.adamw_state + r.gathered_root + r.gathered_block + r.activations + r.head;
  if (diloco) r.outer_cpu = 8 * shard_elems;
  return r;
}

std::string model_stats_json(const ModelConfig& m, const ModelStats& s, const TrainConfig& train, bool diloco) {
  const int64_t seq_len = train.seq_len;
  nlohmann::ordered_json j;
  j["model"] = m.name;
  j["params"] = s.params_total;
  j["params_embedding"] = s.params_embedding;
  j["params_non_embedding"] = s.params_total - s.params_embedding;
  j["params_per_layer"] = s.params_per_layer;
  j["shape"] = {{"vocab_size", m.vocab_size}, {"dim", m.dim},          {"n_layers", m.n_layers},
                {"n_heads", m.n_heads},       {"n_kv_heads", m.n_kv_heads}, {"ffn_dim", m.ffn_dim},
                {"max_seq_len", m.max_seq_len}, {"rope_theta", m.rope_theta}};
  j["seq_len"] = seq_len;
  j["flops_per_token"] = s.flops_per_token;
  j["memory_bytes"] = {{"weights_fp32", s.weight_bytes_fp32},
                       {"weights_bf16", s.weight_bytes_bf16},
                       {"grads_fp32", s.grad_bytes_fp32},
                       {"adamw_state_fp32", s.adamw_bytes_fp32},
                       {"train_total_fp32", s.weight_bytes_fp32 + s.grad_bytes_fp32 + s.adamw_bytes_fp32}};
  const HeadActivations h = head_activations(m, train);
  j["batch_size"] = train.batch_size;
  j["head_activations_bytes"] = {{"tokens_per_micro_batch", h.tokens},
                                 {"loss_chunk_tokens", h.chunk_tokens},
                                 {"logits_fp32_per_copy", h.logits_bytes},
                                 {"logits_fp32_per_copy_unchunked", h.unchunked_bytes}};
  const RankPlan r = rank_plan(m, train, diloco);
  constexpr int64_t kH100 = 80'000'000'000;  // bytes on an 80 GB H100, of which 95% are planned with
  j["per_rank"] = {{"nproc_per_node", r.ranks},
                   {"parameters_fp32", r.parameters},
                   {"gradients_fp32", r.gradients},
                   {"adamw_state_fp32", r.adamw_state},
                   {"gathered_root", r.gathered_root},
                   {"gathered_block", r.gathered_block},
                   {"activations", r.activations},
                   {"attention_scores_unfused_per_block", r.attention_scores_unfused},
                   {"head", r.head},
                   {"device_total", r.device_total},
                   {"outer_cpu", r.outer_cpu},
                   {"fits_h100_80gb", r.device_total <= kH100 / 100 * 95}};
  return j.dump(2);
}

}  // namespace meridian::metrics
