// Sharded data parallel inside a node (FSDP / ZeRO-3) over a local group of G ranks, one
// process each (DESIGN.md, "The two-level mesh").
//
// The model is cut into units: one per transformer block, and a root unit holding the
// embedding, the final norm and the head. Each rank keeps 1/G of every unit as one flat fp32
// shard (the unit's parameters concatenated in module order, zero-padded to a multiple of G),
// which is what AdamW and the clipping see; gradients and AdamW moments are shards alike.
//   forward:  a block's unit is all-gathered, the block runs without autograd, the gathered
//             parameters are freed; only the block's input is kept.
//   backward: the unit is gathered again, the block's forward is recomputed with autograd, its
//             gradients are reduce-scattered (mean over the ranks, fp32) into the shard's .grad,
//             and the gathered parameters and gradients are freed.
// So with G > 1 every block is activation-checkpointed. The root unit stays gathered from the
// first forward of a step to finish_backward(), which reduce-scatters its gradients.
// Each rank trains on its own rows of the global batch (data/loader.h set_shard), so a step
// over G ranks of batch B equals one process of batch G x B up to the order of the sums.
//
// The local group is c10d's ProcessGroupGloo (ProcessGroupNCCL on CUDA builds is not wired yet).
// Gloo in libtorch 1.13 has no reduce_scatter, so it is an all-reduce of which each rank keeps
// its slice: the same bytes on every rank, in a fixed order, so the shards stay deterministic.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/llama.h"
#include "train/optimizer.h"

namespace c10d {
class ProcessGroupGloo;
class Store;
}

namespace meridian::train {

// The ranks of one machine. Rendezvous through a file every rank can reach (c10d::FileStore).
class LocalGroup {
 public:
  static Result<std::unique_ptr<LocalGroup>> connect(const std::string& rendezvous_file, int rank, int size,
                                                     std::chrono::milliseconds timeout);
  ~LocalGroup();
  int rank() const { return rank_; }
  int size() const { return size_; }

  // shard [n] -> full [size * n], rank r's shard at r * n.
  void all_gather(const torch::Tensor& shard, torch::Tensor& full);
  // The same, but only rank 0 receives: `full` is written on rank 0 and untouched elsewhere.
  void gather_to_rank0(const torch::Tensor& shard, torch::Tensor& full);
  // full [size * n] -> shard [n] = (sum over ranks of full) [rank * n, (rank + 1) * n) / size.
  void reduce_scatter_mean(torch::Tensor& full, torch::Tensor& shard);
  // The inverse of gather_to_rank0: rank 0's `full` [size * n] (ignored elsewhere) -> shard [n].
  void scatter_from_rank0(const torch::Tensor& full, torch::Tensor& shard);
  void all_reduce_sum(torch::Tensor& t);  // in place, every rank gets the same sum
  double all_reduce_sum(double value);
  void barrier();

  // Messages from rank 0 to the other ranks, in order (small: a command and its arguments).
  // receive() waits as long as rank 0 takes (the local ranks of a DiLoCo node wait through its
  // round start, which has no bound); a rank never outlives its launcher, so a dead rank 0 ends
  // the wait with the node. Kept in the rendezvous store, not in the collectives' timeouts.
  void post(const std::string& message);
  std::string receive();
  // Named values any rank may set and any rank read (a rank's outcome for rank 0, a flag):
  // has() does not wait, take() waits like receive().
  void put(const std::string& key, const std::string& value);
  bool has(const std::string& key);
  std::string take(const std::string& key);

 private:
  LocalGroup() = default;
  std::string wait_and_get(const std::string& store_key);  // waits without bound (see receive)
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  int rank_ = 0, size_ = 1;
  uint64_t messages_ = 0;  // posted (rank 0) or received (the others)
};

class ShardedModel {
 public:
  // Takes rank `group.rank()`'s shards of the model's current (full) parameters, then frees them.
  ShardedModel(model::Llama model, LocalGroup& group);
  ~ShardedModel();

  // The flat shards, "fsdp.<unit>" (leaf tensors; their .grad is this rank's gradient shard).
  NamedTensors shards() const;
  std::vector<torch::Tensor> shard_tensors() const;

  // tokens [B, T] -> the final norm's output [B, T, C]; gathers the root unit (kept until
  // finish_backward or release_root) and each block as it runs.
  torch::Tensor hidden(const torch::Tensor& tokens);
  // After the last backward of a step: the root unit's gradients into its shard, root freed.
  void finish_backward();
  void release_root();  // after a forward without backward (evaluation)

  // Full named tensors from per-unit shards laid out like shards() (parameters, or AdamW
  // moments): every rank takes part; rank 0 gets the result, the others an empty list (so that
  // a checkpoint costs the whole model's memory on one rank only).
  std::vector<std::pair<std::string, torch::Tensor>> gather_named(const std::vector<torch::Tensor>& unit_shards);
  // The inverse: this rank's slice of full named tensors (by parameter name) into unit_shards.
  std::string scatter_named(const std::vector<std::pair<std::string, torch::Tensor>>& full,
                            const std::vector<torch::Tensor>& unit_shards) const;
  // The same from local rank 0's tensors only (the others pass an empty list): every rank
  // takes part, and only the shards travel. Rank 0 checks names and shapes first
  // (check_named), since a collective cannot stop half-way.
  void scatter_named_from_rank0(const std::vector<std::pair<std::string, torch::Tensor>>& full,
                                const std::vector<torch::Tensor>& unit_shards);
  std::string check_named(const std::vector<std::pair<std::string, torch::Tensor>>& full) const;
  // The parameters' names and shapes in the module's order (the layout of a node of one rank).
  std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes() const;

  struct Unit;  // defined in fsdp.cpp

 private:
  friend class BlockFunction;
  void gather(Unit& unit);
  void release(Unit& unit);
  void reduce_grads(Unit& unit, const std::vector<torch::Tensor>& grads);

  model::Llama model_;
  LocalGroup& group_;
  std::vector<std::unique_ptr<Unit>> units_;  // [0] root, [1 + i] block i
};

}  // namespace meridian::train
