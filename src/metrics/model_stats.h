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

// What one local rank holds with train.nproc_per_node = G (train/fsdp.h), in bytes: an estimate
// from the shapes, for planning (`meridian info --nproc-per-node G`). G = 1 is the plain trainer.
struct RankPlan {
  int64_t ranks = 1;
  int64_t parameters = 0, gradients = 0, adamw_state = 0;  // this rank's fp32 shards
  // G > 1: the root unit (embedding, final norm, head) gathered through the step, and one block
  // gathered in its backward, each with its full gradients and the flat reduce-scatter buffer.
  int64_t gathered_root = 0, gathered_block = 0;
  // Saved for the backward at train.batch_size x train.seq_len: every block's output with G > 1
  // (blocks are recomputed) plus one block's autograd tensors, or every block's with G = 1; the
  // head's logits (two chunk copies) and its input. In bf16 under train.bf16.
  int64_t activations = 0, head = 0;
  // Not in activations: the T x T attention scores an unfused attention (libtorch 1.13) keeps
  // per block, besides the above (fused attention on libtorch >= 2 keeps none).
  int64_t attention_scores_unfused = 0;
  int64_t device_total = 0;
  int64_t outer_cpu = 0;  // diloco.enabled: the fp32 outer copy and momentum of the shard, in CPU memory
};
RankPlan rank_plan(const ModelConfig& model, const TrainConfig& train, bool diloco);

// model_stats(model, train.seq_len), head_activations and rank_plan as JSON (`meridian info`).
std::string model_stats_json(const ModelConfig& model, const ModelStats& stats, const TrainConfig& train, bool diloco = false);

}  // namespace meridian::metrics
