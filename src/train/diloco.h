// DiLoCo's outer loop (DESIGN.md section 2), the part that does not depend on the network:
// the fp32 outer parameters theta, the pseudo-gradient, and the outer Nesterov step.
//
// Per round, with theta identical on every node:
//   start: model <- theta
//   H inner AdamW steps (the trainer's train_step; inner state kept across rounds)
//   delta   = theta - model                        (pseudo_gradient(), fp32, flat)
//   delta   = mean over nodes of delta             (a PseudoGradientReducer)
//   m       = mu * m + delta                       (step())
//   theta   = theta - lr_outer * (delta + mu * m)  (Nesterov in PyTorch's SGD convention)
//   model  <- theta
// With one node and no reducer this is Lookahead with a Nesterov outer step.
// Flat layout: the parameters in the model's named_parameters() order, each flattened, back
// to back; that is the buffer the all-reduce moves.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <string>

#include "core/status.h"
#include "train/optimizer.h"

namespace meridian::net {
class OtherRings;  // net/communicator.h
}

namespace meridian::train {

class Trainer;  // train/trainer.h

// What a round cost beyond the inner steps (the "outer" metrics line).
struct RoundStats {
  int nodes = 1;                      // members that averaged the pseudo-gradient
  double barrier_s = 0;               // waiting at round start for the other members (and joiners)
  double state_sync_s = 0;            // shared-state syncs: hash check, joiners' downloads
  uint64_t state_bytes_downloaded = 0;
  double all_reduce_s = 0;            // the pseudo-gradient all-reduce, retries included
  uint64_t all_reduce_bytes_sent = 0;
  int retries = 0;                    // all-reduces that failed and ran again with the survivors
  bool joined = false;                // this node received the run's state (a joiner, or a stale node)
  // all_reduce_mean found this node behind the run (back after an eviction): it took the run's
  // state, its pseudo-gradient is void, and the round the others begin now starts for it too
  // (no outer step, no "outer" line: the round number it held belongs to the run's history).
  bool restarted = false;
};

// How the nodes of a round meet: agree on the members at round start (and bring a joiner up
// to date), then average the flat fp32 pseudo-gradient so that every node ends with the same
// bytes. LocalReducer is the world of one; ElasticRounds (train/elastic.h) the network.
class RoundSync {
 public:
  virtual ~RoundSync() = default;
  // Before the first inner step of every round (and at the start of Trainer::run).
  virtual Status begin_round(Trainer&, RoundStats*) { return Status::ok(); }
  virtual Status all_reduce_mean(float* data, size_t count, RoundStats* stats) = 0;
  virtual int world_size() const = 0;
  // A node of G > 1 local ranks: whether every member of this round's view has G local ranks
  // too, so that the pseudo-gradient all-reduce runs on one ring per local rank index (data:
  // local rank 0's shard here, the other shards on `others`). Otherwise local rank 0 reduces
  // the whole pseudo-gradient in the layout of a one-rank node.
  virtual bool rings_per_local_rank(int /*local_world*/) const { return false; }
  virtual Status all_reduce_mean(float* data, size_t count, RoundStats* stats, net::OtherRings* /*others*/) {
    return all_reduce_mean(data, count, stats);
  }

  // diloco.overlap (train/overlap.cpp). A round start that may hold the joiners back
  // (admit_joiners = false) and says how many were waiting, the same number on every member.
  virtual Status begin_round(Trainer& trainer, RoundStats* stats, bool /*admit_joiners*/, size_t* joiners_waiting) {
    *joiners_waiting = 0;
    return begin_round(trainer, stats);
  }
  // The all-reduce of all_reduce_mean, running in the background from start to finish (which
  // waits for it); the caller leaves `data` and this RoundSync alone meanwhile. Retries are
  // made in the background too. If this node turns out to be behind the run meanwhile, finish
  // takes the run's state into the trainer and returns RoundStats::restarted, as all_reduce_mean.
  virtual void start_all_reduce_mean(float* data, size_t count) {
    pending_data_ = data;
    pending_count_ = count;
  }
  virtual Status finish_all_reduce_mean(RoundStats* stats) { return all_reduce_mean(pending_data_, pending_count_, stats); }
  // True once the all-reduce in flight has found this node behind the run (it holds the run's
  // state for finish to take): the round this node computes meanwhile is void, and the others
  // already train the next one, so the trainer finishes at once rather than at its round end.
  virtual bool behind_the_run() const { return false; }

 private:
  float* pending_data_ = nullptr;
  size_t pending_count_ = 0;
};

class LocalReducer final : public RoundSync {
 public:
  Status all_reduce_mean(float*, size_t, RoundStats*) override { return Status::ok(); }
  int world_size() const override { return 1; }
};

struct OuterOptions {
  double lr = 0.7;
  double momentum = 0.9;
};

class OuterOptimizer {
 public:
  // theta starts as an fp32 copy of the parameters; the momentum at zero.
  OuterOptimizer(NamedTensors params, OuterOptions options);

  int64_t numel() const { return theta_.numel(); }
  // theta - params, flattened (f32 [N]); the returned tensor is a reused buffer.
  torch::Tensor pseudo_gradient() { return pseudo_gradient_from(theta_); }
  // start - params (f32 [N]): the progress of a round that began at `start` (diloco.overlap).
  torch::Tensor pseudo_gradient_from(const torch::Tensor& start);
  // The outer Nesterov step with the averaged pseudo-gradient (f32 [N]), then params <- theta.
  void step(const torch::Tensor& delta_mean);
  // The same step on theta and the momentum only; the parameters are left as they are.
  void apply(const torch::Tensor& delta_mean);
  // params <- theta (casting to the parameters' dtype).
  void copy_theta_to_params() { copy_to_params(theta_); }
  void copy_to_params(const torch::Tensor& flat);  // f32 [N]
  const torch::Tensor& theta() const { return theta_; }
  const torch::Tensor& momentum() const { return momentum_; }
  const OuterOptions& options() const { return options_; }
  // diloco.overlap: where the next round starts while the mean of `delta` (this node's
  // pseudo-gradient of the round just ended) is in flight: theta - delta (delayed), or the
  // outer step with delta in place of the mean, the momentum left as it is (eager):
  // theta - lr ((1 + mu) delta + mu^2 m).
  void overlap_start(const torch::Tensor& delta, bool eager, torch::Tensor& out) const;
  int64_t rounds() const { return rounds_; }

  // "outer.theta" and "outer.momentum", both f32 [N].
  NamedTensors state() const;
  std::string load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t rounds);
  // XXH3-128 of theta: equal on every node after every round.
  std::string theta_hash() const;

 private:
  std::vector<torch::Tensor> params_;
  OuterOptions options_;
  torch::Tensor theta_;     // f32 [N]
  torch::Tensor momentum_;  // f32 [N]
  torch::Tensor delta_;     // f32 [N], scratch for pseudo_gradient()
  int64_t rounds_ = 0;
};

}  // namespace meridian::train
