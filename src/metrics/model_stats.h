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
std::string model_stats_json(const ModelConfig& model, const ModelStats& stats, int64_t seq_len);

}  // namespace meridian::metrics
