// Model size arithmetic from the config alone, without allocating anything: parameter counts,
// FLOPs per token (DESIGN.md section 6) and the memory for weights, gradients and AdamW state.
#pragma once

#include <cstdint>
#include <string>

#include "config/config.h"

namespace meridian::metrics {

struct ModelStats {
  int64_t params_total = 0;
  int64_t params_embedding = 0;   // the input embedding table (a lookup, no FLOPs)
  int64_t params_per_layer = 0;
  // FLOPs per token of one training step (forward + backward):
  // 6 * (params_total - params_embedding) + 12 * L * C * T.
  double flops_per_token = 0;
  int64_t weight_bytes_fp32 = 0;
  int64_t weight_bytes_bf16 = 0;
  int64_t grad_bytes_fp32 = 0;
  int64_t adamw_bytes_fp32 = 0;  // exp_avg + exp_avg_sq
};

ModelStats model_stats(const ModelConfig& model, int64_t seq_len);
// The head's fp32 logits of one micro-batch (train.batch_size x train.seq_len tokens), one copy:
// what train.loss_chunk_tokens bounds (the forward and the backward each hold about two).
struct HeadActivations {
  int64_t tokens = 0;          // per micro-batch
  int64_t chunk_tokens = 0;    // tokens whose logits exist at once
  int64_t logits_bytes = 0;    // chunk_tokens x vocab x 4
  int64_t unchunked_bytes = 0; // tokens x vocab x 4 (train.loss_chunk_tokens = 0)
};
HeadActivations head_activations(const ModelConfig& model, const TrainConfig& train);

// model_stats(model, train.seq_len) and head_activations as JSON (`meridian info`).
std::string model_stats_json(const ModelConfig& model, const ModelStats& stats, const TrainConfig& train);

}  // namespace meridian::metrics
