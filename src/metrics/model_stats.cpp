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

std::string model_stats_json(const ModelConfig& m, const ModelStats& s, const TrainConfig& train) {
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
  return j.dump(2);
}

}  // namespace meridian::metrics
