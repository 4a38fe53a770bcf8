// The single-process DiLoCo reference for the "2 nodes, fp32, bit for bit" test: two model
// replicas in one process, the same data split as two nodes (rank r of 2 reads every second
// sequence), H inner steps each, the pseudo-gradients averaged the way the all-reduce does it
// (acc = d0; acc += d1; acc /= 2 in fp32), the outer Nesterov step on both. No network, no
// coordinator, no state sync: only the trainer's inner step and the outer optimizer.
//
// Usage: diloco_reference CHECKPOINT_DIR [key=value ...]
//   The overrides are applied to the tiny preset (as the nodes' --set); train.steps must be a
//   multiple of diloco.inner_steps. Compares every parameter of the checkpoint (written by a
//   node of the networked run) with both replicas, bit for bit; exit 0 when all are equal.
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "config/config.h"
#include "io/checkpoint.h"
#include "train/trainer.h"

using namespace meridian;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: diloco_reference CHECKPOINT_DIR [key=value ...]\n");
    return 2;
  }
  std::vector<std::string> overrides(argv + 2, argv + argc);
  auto config = load_config("tiny", overrides);
  if (!config) {
    std::fprintf(stderr, "error: %s\n", config.status().message().c_str());
    return 2;
  }
  const int64_t H = config->diloco.inner_steps;
  if (!config->diloco.enabled || config->train.steps % H != 0) {
    std::fprintf(stderr, "error: needs diloco.enabled and train.steps a multiple of diloco.inner_steps\n");
    return 2;
  }
  train::TrainerOptions options;
  options.write_run_dir = false;
  options.out = nullptr;
  std::vector<std::unique_ptr<train::Trainer>> replicas;
  for (int r = 0; r < 2; ++r) {
    auto t = train::Trainer::create(config.value(), options);
    if (!t) {
      std::fprintf(stderr, "error: %s\n", t.status().message().c_str());
      return 2;
    }
    t.value()->set_data_shard(r, 2);
    replicas.push_back(std::move(t.value()));
  }
  // diloco.overlap = delayed | eager: each replica's round starts from its own point s, the
  // mean of round t is applied at the end of round t+1, and the last round is not overlapped
  // (train/overlap.cpp, docs/algorithms.md).
  const std::string overlap = config->diloco.overlap;
  const int64_t rounds = config->train.steps / H;
  std::vector<torch::Tensor> start;
  for (auto& t : replicas) start.push_back(t->outer()->theta().clone());
  torch::Tensor pending;  // the mean in flight
  auto print_theta = [&](int64_t round) {
    std::printf("reference round %lld: theta %s\n", static_cast<long long>(round), replicas[0]->outer()->theta_hash().substr(0, 16).c_str());
  };
  for (int64_t round = 0; round < rounds; ++round) {
    for (auto& t : replicas)
      for (int64_t s = 0; s < H; ++s) t->train_step();
    if (overlap == "none") {
      torch::Tensor mean = replicas[0]->outer()->pseudo_gradient().clone();
      mean.add_(replicas[1]->outer()->pseudo_gradient());
      mean.div_(2.0f);
      for (auto& t : replicas) t->outer()->step(mean);
      print_theta(round + 1);
      continue;
    }
    if (pending.defined()) {
      for (auto& t : replicas) t->outer()->apply(pending);
      print_theta(round);
    }
    std::vector<torch::Tensor> delta;
    for (size_t r = 0; r < replicas.size(); ++r) delta.push_back(replicas[r]->outer()->pseudo_gradient_from(start[r]).clone());
    torch::Tensor mean = delta[0].clone();
    mean.add_(delta[1]);
    mean.div_(2.0f);
    if (round + 1 == rounds) {  // the last round: nothing stays in flight
      for (auto& t : replicas) t->outer()->step(mean);
      print_theta(round + 1);
      break;
    }
    pending = mean;
    for (size_t r = 0; r < replicas.size(); ++r) {
      replicas[r]->outer()->overlap_start(delta[r], overlap == "eager", start[r]);
      replicas[r]->outer()->copy_to_params(start[r]);
    }
  }

  auto dir = io::resolve_checkpoint(argv[1]);
  auto ck = dir ? io::load_checkpoint(dir.value()) : Result<io::Checkpoint>(dir.status());
  if (!ck) {
    std::fprintf(stderr, "error: %s\n", ck.status().message().c_str());
    return 2;
  }
  std::map<std::string, torch::Tensor> saved(ck->model.begin(), ck->model.end());
  int mismatches = 0;
  size_t compared = 0;
  for (auto& t : replicas) {
    for (auto& item : t->model()->named_parameters()) {
      auto it = saved.find(item.key());
      if (it == saved.end() || !torch::equal(it->second, item.value().detach())) {
        const double diff = it == saved.end() ? -1.0 : (it->second - item.value().detach()).abs().max().item<double>();
        std::printf("MISMATCH %s (max abs diff %g)\n", item.key().c_str(), diff);
        ++mismatches;
      }
      ++compared;
    }
  }
  std::printf("%zu parameter tensors compared, %d differ\n", compared, mismatches);
  return mismatches == 0 ? 0 : 1;
}
