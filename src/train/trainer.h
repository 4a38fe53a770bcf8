// The single-node trainer: the inner loop of DESIGN.md section 1. It owns the model, the AdamW
// state, the data loaders, the run directory (resolved config, metrics.jsonl, checkpoints) and
// the counters, and can resume bit-exactly from a checkpoint. With diloco.enabled, run() ends a
// round every diloco.inner_steps steps with the outer step (train/diloco.h); a RoundSync joins
// the round with the other nodes (train/elastic.h over the network, or this node alone).
//
// Deliberately not here: the network (RoundSync's implementations), tokenization, the CLI.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/status.h"
#include "data/loader.h"
#include "data/mixture.h"
#include "metrics/jsonl.h"
#include "model/llama.h"
#include "train/diloco.h"
#include "train/fsdp.h"
#include "train/optimizer.h"

namespace meridian::net {
class RankRing;  // net/rank_ring.h
}

namespace meridian::train {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0;        // mean cross-entropy of the step's tokens (nats/token)
  double z_loss = 0;      // mean squared log-sum-exp (unweighted)
  double lr = 0;
  double grad_norm = 0;   // before clipping
  double step_seconds = 0;
  double tokens_per_s = 0;
  double mfu = 0;         // fraction of run.peak_tflops
};

struct TrainSummary {
  int64_t first_step = 0;
  int64_t last_step = 0;
  double first_loss = 0;
  double final_loss = 0;   // mean training loss over the last 20 steps
  std::optional<double> val_loss;
  double unigram_entropy = 0;
  double seconds = 0;
  double tokens_per_s = 0;
  std::string checkpoint;  // directory of the final checkpoint
  std::string state_hash;
  bool interrupted = false;  // TrainerOptions::stop was raised before the last step
};

struct TrainerOptions {
  std::string resume;          // checkpoint directory to continue from ("" = fresh run)
  std::FILE* out = stdout;     // progress lines; nullptr = silent
  bool write_run_dir = true;   // resolved config, metrics.jsonl, checkpoints
  bool synthetic_data = false; // random tokens instead of shards (benchmarks)
  // Meets the other nodes of each round when diloco.enabled; nullptr: this node alone.
  RoundSync* round_sync = nullptr;
  // Raised (by a signal handler) to stop after the current step with a checkpoint.
  const std::atomic<bool>* stop = nullptr;
  // The other local ranks of this node (train.nproc_per_node > 1): the model is sharded across
  // them (train/fsdp.h), each trains on its rows of the global batch; only rank 0 writes the run
  // directory. nullptr: one process holds the whole model.
  LocalGroup* local_group = nullptr;
  // Local rank r > 0 of a DiLoCo node: the ring on which it all-reduces its shard of the
  // pseudo-gradient with local rank r of the other nodes (net/rank_ring.h); nullptr: rank 0
  // reduces the whole pseudo-gradient.
  net::RankRing* rank_ring = nullptr;
};

class Trainer {
 public:
  static Result<std::unique_ptr<Trainer>> create(const Config& config, TrainerOptions options);

  // Trains until train.steps (or train.stop_at_step), evaluating, logging and checkpointing as
  // configured; always leaves a checkpoint of the last step when write_run_dir is set.
  Result<TrainSummary> run();

  // One optimizer step: grad_accum micro-batches forward/backward, clip, AdamW with the WSD lr.
  StepMetrics train_step();
  // Mean validation cross-entropy over `batches` micro-batches, always the same sequences.
  std::optional<double> evaluate(int64_t batches);
  Result<std::string> save_checkpoint();
  // The outer round that ends at the current step: pseudo-gradient, reduce, Nesterov step.
  Status outer_step();

  // XXH3-128 of every parameter, optimizer moment, the step and the data cursor.
  // With G > 1 every local rank must call it (it gathers); only rank 0's covers the whole state.
  std::string state_hash();

  // For RoundSync implementations (DiLoCo across nodes): the run's state every node holds alike
  // (outer optimizer, counters, data cursor) and this node's own (the inner optimizer), laid out
  // as on a node of one local rank whatever train.nproc_per_node, so that nodes of any G meet:
  // "outer.theta" and "outer.momentum" f32 [N] (the parameters flattened in module order), the
  // AdamW moments under "exp_avg.<parameter>" and "exp_avg_sq.<parameter>". With G > 1 a
  // RoundSync runs on local rank 0 only: these gather from and scatter to the other ranks,
  // which follow rank 0 meanwhile (follow_local_rank0 below; train/local_ranks.cpp).
  NamedTensors outer_state();
  std::string load_outer_state(const NamedTensors& state, int64_t rounds);
  int64_t outer_rounds() const { return outer_->rounds(); }
  NamedTensors inner_state();
  int64_t inner_step() const { return optimizer_->step_count(); }
  std::string load_inner_state(const NamedTensors& state, int64_t step);
  // A round begins with this node as rank `node_rank` of `nodes`: each local rank takes its
  // share of the node's data shard, and the parameters are set to the outer theta.
  void start_round_as(int node_rank, int nodes);
  // The counters and data cursor of the run's state: as they were at the start of the round in
  // progress (from start_round_as to its outer step), so that a sync during the all-reduce's
  // retries publishes the state the round began from, the one that goes with outer_state();
  // outside a round, the current ones.
  struct Progress {
    int64_t step = 0, tokens = 0;
    std::string cursor;
  };
  Progress run_progress() const;
  OuterOptimizer* outer() { return outer_.get(); }  // this rank's shard of the outer state
  int64_t tokens_seen() const { return tokens_seen_; }
  void set_progress(int64_t step, int64_t tokens_seen);
  // The training data cursor as text (a mixture's JSON, or {"epoch":E,"position":P}).
  std::string data_cursor() const;
  Status set_data_cursor(const std::string& text);
  // This process's share of every batch row's draws (data/loader.h): rank r of `world`.
  void set_data_shard(int rank, int world);
  model::Llama& model() { return model_; }
  int64_t step() const { return step_; }
  const Config& config() const { return config_; }
  double peak_flops() const { return peak_flops_; }

 private:
  Trainer(const Config& config, TrainerOptions options);
  Status init_data();
  Status init_val_data();
  Status load(const std::string& checkpoint_dir);
  // Allocates [B, T] int64 inputs and targets, lets `fill` write them, moves them to the device.
  void next_batch(const std::function<void(int64_t*, int64_t*)>& fill, torch::Tensor& inputs, torch::Tensor& targets);
  void next_train_batch(torch::Tensor& inputs, torch::Tensor& targets);  // mixture, shards or synthetic
  void log_step(const StepMetrics& m, double eta_seconds);
  // Forward and loss of one micro-batch: the head and loss in chunks of train.loss_chunk_tokens
  // (model::chunked_lm_loss), or the plain logits when it is 0.
  model::LossParts forward_loss(const torch::Tensor& inputs, const torch::Tensor& targets, double z_loss_weight);
  Status begin_round();
  // Every parameter and AdamW moment under its full name (gathered from the shards with G > 1,
  // on local rank 0 only: the other ranks get an empty list).
  std::vector<std::pair<std::string, torch::Tensor>> full_parameters();
  std::vector<std::pair<std::string, torch::Tensor>> full_optimizer_state();
  // The live AdamW moment shards of one kind ("exp_avg." or "exp_avg_sq."), one per unit.
  std::vector<torch::Tensor> moment_shards(const std::string& moment) const;

  // DiLoCo with G > 1 (train/local_ranks.cpp). Local rank 0 runs the RoundSync and tells the
  // other ranks what it needs from them and what came of it; they follow until it says "done".
  // `shard`: this rank's pseudo-gradient shard, during an all-reduce on one ring per local rank.
  Status follow_local_rank0(RoundStats* stats, torch::Tensor* shard = nullptr);
  Status tell_local_ranks(Status result, const RoundStats& stats);
  // One outer all-reduce of the pseudo-gradient `delta` (this rank's flat shards with G > 1),
  // in place; sets *norm to the node's |delta| before it.
  Status all_reduce_pseudo_gradient(torch::Tensor& delta, double* norm);
  // flat f32 shards laid out like fsdp_->shards() <-> f32 [N] in module order (rank 0 only).
  std::vector<torch::Tensor> unit_views(const torch::Tensor& flat_shards) const;
  torch::Tensor gather_flat(const torch::Tensor& flat_shards);
  void scatter_flat(const torch::Tensor& flat, const torch::Tensor& flat_shards);  // from rank 0
  NamedTensors split_flat(const torch::Tensor& flat) const;  // [N] -> the parameters' shapes
  int64_t parameter_count() const;                           // N
  NamedTensors full_outer_state();                           // one-rank layout; rank 0 with G > 1
  void refresh_outer_full();                                 // every rank: outer_full_ <- gathered
  void take_outer_shards(int64_t rounds);                    // every rank: from rank 0's outer_full_
  void take_inner_shards(const NamedTensors& full, int64_t step);
  bool local_lead() const { return !fsdp_ || options_.local_group->rank() == 0; }
  bool writes_run_dir() const { return options_.write_run_dir && (!options_.local_group || options_.local_group->rank() == 0); }
  int local_world() const { return options_.local_group ? options_.local_group->size() : 1; }

  // The round in progress (diloco.enabled).
  struct Round {
    std::chrono::steady_clock::time_point start;
    double compute_s = 0;  // inner steps
    int64_t end_step = -1; // the step the round ended at, when logged later (diloco.overlap)
    double loss_sum = 0;
    int64_t steps = 0;
    RoundStats stats;
  };

  // RoundStats::restarted: this node took the run's state; a round of the run begins for it.
  void restart_round(const RoundStats& carried);
  void log_outer_round(const Round& round, double local_norm, double outer_s, double round_s, double wait_s);

  // diloco.overlap = delayed | eager (train/overlap.cpp; docs/algorithms.md). At a round end:
  // finish the all-reduce in flight and take its outer step, meet the others (joiners held
  // back), then start this round's all-reduce in the background and begin the next round from
  // the corrected point. drain: leave nothing in flight (the last round, a checkpoint; also
  // when joiners wait, who are then admitted at a second meeting unless `last`).
  bool overlapped() const { return outer_ && config_.diloco.overlap != "none"; }
  Status overlapped_outer_step(bool drain, bool last);
  // Waits for the all-reduce in flight and takes its outer step (logging its round), keeping
  // the progress of the round in progress: params += theta - start, start = theta, as at a
  // round start without overlap. Nothing in flight: nothing to do.
  Status settle();
  // The first half of both: *restarted when this node turned out to be behind the run and took
  // its state (the round in progress is void).
  Status finish_flight(bool* restarted);
  // Between two inner steps: when the all-reduce in flight found this node behind the run,
  // finish it now (*restarted), so the void round stops at once and the run's round begins.
  Status catch_up_with_run(bool* restarted);
  struct Flight {
    Round round;         // the round whose pseudo-gradient is in flight
    double norm = 0;     // |delta| of this node
    double round_s = 0;  // its window, from the end of the round before to its own end
  };
  torch::Tensor start_;      // f32 [N]: the point the round in progress started from
  torch::Tensor in_flight_;  // f32 [N]: the pseudo-gradient in the all-reduce, then its mean
  std::optional<Flight> flight_;

  Config config_;
  TrainerOptions options_;
  torch::Device device_{torch::kCPU};
  model::Llama model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<ShardedModel> fsdp_;  // local_group of more than one rank
  std::unique_ptr<OuterOptimizer> outer_;  // set when diloco.enabled
  LocalReducer local_reducer_;
  Round round_;
  bool round_open_ = false;  // a round began inside the all-reduce (RoundStats::restarted)
  // G > 1: the outer state in the one-rank layout, gathered on local rank 0 after every outer
  // step (and at a round start when stale), so that a round start's sync costs no gather.
  NamedTensors outer_full_;
  bool outer_full_valid_ = false;             // the same on every local rank
  std::optional<std::pair<int, int>> node_shard_;  // rank 0: start_round_as since the last tell
  // G > 1: this round's all-reduce runs on one ring per local rank (RoundSync::rings_per_local_rank,
  // decided by rank 0 at the round start and told to the others).
  bool rings_ = false;
  std::optional<Progress> round_start_;  // see run_progress()
  std::vector<torch::Tensor> params_;
  std::optional<data::TokenLoader> train_data_;   // data.train_path
  std::optional<data::MixtureLoader> mixture_;    // data.mixture (instead of train_data_)
  std::optional<data::TokenLoader> val_data_;
  metrics::JsonlSink metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  int64_t bos_id_ = 0, eos_id_ = 0;  // of data.tokenizer, written into checkpoints' config.json
  double flops_per_token_ = 0;
  double peak_flops_ = 0;
  bool peak_measured_ = false;  // run.peak_tflops unset: MFU is against a measured matmul rate
  uint64_t synthetic_counter_ = 0;
};

// Measures the device's matmul rate (FLOP/s) for ~0.2 s, in bf16 when `bf16` is set: the MFU
// denominator when run.peak_tflops is 0.
double measure_matmul_flops(const torch::Device& device, bool bf16);

}  // namespace meridian::train
