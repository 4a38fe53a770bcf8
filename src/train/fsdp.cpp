#include "train/fsdp.h"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cmath>
#include <map>

#include "core/assert.h"

namespace meridian::train {

// ---- LocalGroup ---------------------------------------------------------------------------------

Result<std::unique_ptr<LocalGroup>> LocalGroup::connect(const std::string& rendezvous_file, int rank, int size,
                                                        std::chrono::milliseconds timeout) {
  std::unique_ptr<LocalGroup> g(new LocalGroup());
  g->rank_ = rank;
  g->size_ = size;
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(rendezvous_file, size);
    store->setTimeout(timeout);
    g->store_ = store;
    auto options = c10d::ProcessGroupGloo::Options::create();
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    options->timeout = timeout;
    g->pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    g->barrier();
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return Status::error(fmt::format("local rank {} of {}: the local rendezvous through {} failed within {} ms: {}", rank, size,
                                     rendezvous_file, timeout.count(), what),
                         "start the ranks together with `meridian train --nproc-per-node G` (every rank must reach the rendezvous)");
  }
  return g;
}

LocalGroup::~LocalGroup() = default;

void LocalGroup::all_gather(const torch::Tensor& shard, torch::Tensor& full) {
  const int64_t n = shard.numel();
  MERIDIAN_ASSERT(full.numel() == n * size_, "all_gather: full has {} values, needs {}", full.numel(), n * size_);
  std::vector<at::Tensor> input = {shard.detach().contiguous()};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < size_; ++r) output[0].push_back(full.narrow(0, r * n, n));
  pg_->allgather(output, input)->wait();
}

void LocalGroup::gather_to_rank0(const torch::Tensor& shard, torch::Tensor& full) {
  const int64_t n = shard.numel();
  std::vector<at::Tensor> input = {shard.detach().contiguous()};
  std::vector<std::vector<at::Tensor>> output;
  if (rank_ == 0) {
    MERIDIAN_ASSERT(full.numel() == n * size_, "gather: full has {} values, needs {}", full.numel(), n * size_);
    output.emplace_back();
    for (int r = 0; r < size_; ++r) output[0].push_back(full.narrow(0, r * n, n));
  }
  c10d::GatherOptions options;
  options.rootRank = 0;
  pg_->gather(output, input, options)->wait();
}

void LocalGroup::scatter_from_rank0(const torch::Tensor& full, torch::Tensor& shard) {
  const int64_t n = shard.numel();
  std::vector<at::Tensor> output = {shard};
  std::vector<std::vector<at::Tensor>> input;
  if (rank_ == 0) {
    MERIDIAN_ASSERT(full.numel() == n * size_, "scatter: full has {} values, needs {}", full.numel(), n * size_);
    const torch::Tensor src = full.contiguous();
    input.emplace_back();
    for (int r = 0; r < size_; ++r) input[0].push_back(src.narrow(0, r * n, n));
  }
  c10d::ScatterOptions options;
  options.rootRank = 0;
  pg_->scatter(output, input, options)->wait();
}

void LocalGroup::post(const std::string& message) {
  MERIDIAN_ASSERT(rank_ == 0, "LocalGroup::post on local rank {}", rank_);
  store_->set("message." + std::to_string(messages_++), std::vector<uint8_t>(message.begin(), message.end()));
}

std::string LocalGroup::receive() {
  MERIDIAN_ASSERT(rank_ != 0, "LocalGroup::receive on local rank 0");
  return wait_and_get("message." + std::to_string(messages_++));
}

void LocalGroup::put(const std::string& key, const std::string& value) {
  store_->set("value." + key, std::vector<uint8_t>(value.begin(), value.end()));
}

bool LocalGroup::has(const std::string& key) { return store_->check({"value." + key}); }

std::string LocalGroup::take(const std::string& key) { return wait_and_get("value." + key); }

std::string LocalGroup::wait_and_get(const std::string& key) {
  for (;;) {
    try {
      store_->wait({key}, std::chrono::seconds(10));
      break;
    } catch (const std::exception&) {  // not yet: rank 0 is still busy (its round start)
    }
  }
  const std::vector<uint8_t> bytes = store_->get(key);
  return std::string(bytes.begin(), bytes.end());
}

void LocalGroup::reduce_scatter_mean(torch::Tensor& full, torch::Tensor& shard) {
  const int64_t n = shard.numel();
  MERIDIAN_ASSERT(full.numel() == n * size_, "reduce_scatter: full has {} values, needs {}", full.numel(), n * size_);
  all_reduce_sum(full);
  shard.copy_(full.narrow(0, rank_ * n, n)).div_(static_cast<double>(size_));
}

void LocalGroup::all_reduce_sum(torch::Tensor& t) {
  std::vector<at::Tensor> tensors = {t};
  pg_->allreduce(tensors)->wait();
}

double LocalGroup::all_reduce_sum(double value) {
  torch::Tensor t = torch::full({1}, value, torch::kFloat64);
  all_reduce_sum(t);
  return t.item<double>();
}

void LocalGroup::barrier() { pg_->barrier()->wait(); }

// ---- ShardedModel -------------------------------------------------------------------------------

struct ShardedModel::Unit {
  std::string name;  // "root" or "block.<i>"
  struct Param {
    std::string name;
    torch::Tensor tensor;  // the module's parameter (its data swapped in and out)
    std::vector<int64_t> shape;
    int64_t offset = 0, numel = 0;
  };
  std::vector<Param> params;
  int64_t padded = 0;       // numel of all params, rounded up to a multiple of G
  torch::Tensor shard;      // f32 [padded / G], a leaf: AdamW's parameter
  // f32 [padded]: the gathered parameters, then the flat gradients. The blocks (one gathered at
  // a time) share theirs, so a step allocates no new buffers and the heap does not fragment.
  std::shared_ptr<std::pair<torch::Tensor, torch::Tensor>> buffers;
  bool gathered = false;
};

namespace {

// Writes the params' values (or zeros where undefined) into flat [padded], zero padding included.
void flatten_into(torch::Tensor& flat, const std::vector<ShardedModel::Unit::Param>& params,
                  const std::function<torch::Tensor(const ShardedModel::Unit::Param&)>& value) {
  flat.zero_();
  for (const auto& p : params) {
    const torch::Tensor v = value(p);
    if (v.defined()) flat.narrow(0, p.offset, p.numel).copy_(v.reshape({-1}));
  }
}

torch::Tensor flatten(const std::vector<ShardedModel::Unit::Param>& params, int64_t padded,
                      const std::function<torch::Tensor(const ShardedModel::Unit::Param&)>& value,
                      const torch::TensorOptions& options) {
  torch::Tensor flat = torch::empty({padded}, options);
  flatten_into(flat, params, value);
  return flat;
}

}  // namespace

ShardedModel::ShardedModel(model::Llama model, LocalGroup& group) : model_(std::move(model)), group_(group) {
  torch::NoGradGuard no_grad;
  const int64_t n_layers = model_->config().n_layers;
  units_.push_back(std::make_unique<Unit>());
  units_[0]->name = "root";
  for (int64_t i = 0; i < n_layers; ++i) {
    units_.push_back(std::make_unique<Unit>());
    units_.back()->name = "block." + std::to_string(i);
  }
  const std::string layers = "model.layers.";
  for (auto& item : model_->named_parameters()) {
    size_t unit = 0;
    if (item.key().rfind(layers, 0) == 0) unit = 1 + std::stoul(item.key().substr(layers.size()));
    Unit& u = *units_.at(unit);
    const torch::Tensor& t = item.value();
    const int64_t offset = u.params.empty() ? 0 : u.params.back().offset + u.params.back().numel;
    u.params.push_back({item.key(), t, t.sizes().vec(), offset, t.numel()});
  }
  const int64_t G = group_.size();
  std::shared_ptr<std::pair<torch::Tensor, torch::Tensor>> block_buffers;
  for (auto& u : units_) {
    const int64_t total = u->params.back().offset + u->params.back().numel;
    u->padded = (total + G - 1) / G * G;
    const auto options = u->params[0].tensor.options().requires_grad(false);
    torch::Tensor flat = flatten(u->params, u->padded, [](const Unit::Param& p) { return p.tensor; }, options);
    const int64_t n = u->padded / G;
    u->shard = flat.narrow(0, group_.rank() * n, n).clone().set_requires_grad(true);
    const bool block = u.get() != units_[0].get();
    if (!block || !block_buffers) {
      auto buffers = std::make_shared<std::pair<torch::Tensor, torch::Tensor>>(torch::empty({u->padded}, options),
                                                                               torch::empty({u->padded}, options));
      if (block) block_buffers = buffers;
      u->buffers = buffers;
    } else {
      u->buffers = block_buffers;  // every block has the same shape
    }
    MERIDIAN_ASSERT(u->buffers->first.numel() == u->padded, "fsdp: blocks of different sizes");
    u->gathered = true;  // the module holds the full parameters until now
    release(*u);
  }
}

ShardedModel::~ShardedModel() = default;

NamedTensors ShardedModel::shards() const {
  NamedTensors out;
  for (const auto& u : units_) out.emplace_back("fsdp." + u->name, u->shard);
  return out;
}

std::vector<torch::Tensor> ShardedModel::shard_tensors() const {
  std::vector<torch::Tensor> out;
  for (const auto& u : units_) out.push_back(u->shard);
  return out;
}

void ShardedModel::gather(Unit& unit) {
  if (unit.gathered) return;
  torch::NoGradGuard no_grad;
  torch::Tensor& full = unit.buffers->first;
  group_.all_gather(unit.shard, full);
  for (auto& p : unit.params) p.tensor.set_data(full.narrow(0, p.offset, p.numel).view(p.shape));
  unit.gathered = true;
}

void ShardedModel::release(Unit& unit) {
  if (!unit.gathered) return;
  for (auto& p : unit.params) {
    p.tensor.set_data(torch::empty({0}, unit.shard.options().requires_grad(false)));
    p.tensor.mutable_grad() = torch::Tensor();
  }
  unit.gathered = false;
}

void ShardedModel::reduce_grads(Unit& unit, const std::vector<torch::Tensor>& grads) {
  torch::NoGradGuard no_grad;
  size_t i = 0;
  torch::Tensor& flat = unit.buffers->second;
  flatten_into(flat, unit.params, [&](const Unit::Param&) { return grads[i++]; });
  torch::Tensor mine = torch::empty_like(unit.shard, unit.shard.options().requires_grad(false));
  group_.reduce_scatter_mean(flat, mine);
  torch::Tensor& g = unit.shard.mutable_grad();
  if (g.defined()) g.add_(mine);
  else g = mine;
}

// One block as an autograd node: the forward without a graph, the backward recomputing it.
class BlockFunction : public torch::autograd::Function<BlockFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t self_ptr, int64_t block) {
    auto* self = reinterpret_cast<ShardedModel*>(self_ptr);
    ShardedModel::Unit& unit = *self->units_[1 + block];
    self->gather(unit);
    torch::Tensor y = self->model_->model->layers[block]->as<model::Block>()->forward(x, self->model_->rope());
    self->release(unit);
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = self_ptr;
    ctx->saved_data["block"] = block;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grad_out) {
    auto* self = reinterpret_cast<ShardedModel*>(ctx->saved_data["self"].toInt());
    const int64_t block = ctx->saved_data["block"].toInt();
    ShardedModel::Unit& unit = *self->units_[1 + block];
    const torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    self->gather(unit);
    torch::autograd::variable_list grads;
    {
      torch::AutoGradMode enable(true);
      const torch::Tensor y = self->model_->model->layers[block]->as<model::Block>()->forward(x, self->model_->rope());
      torch::autograd::variable_list inputs = {x};
      for (auto& p : unit.params) inputs.push_back(p.tensor);
      grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    }
    self->reduce_grads(unit, std::vector<torch::Tensor>(grads.begin() + 1, grads.end()));
    self->release(unit);
    return {grads[0], torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor ShardedModel::hidden(const torch::Tensor& tokens) {
  gather(*units_[0]);
  torch::Tensor x = model_->model->embed_tokens(tokens);
  const auto self = reinterpret_cast<int64_t>(this);
  for (int64_t i = 0; i < static_cast<int64_t>(units_.size()) - 1; ++i) x = BlockFunction::apply(x, self, i);
  return model_->model->norm(x);
}

void ShardedModel::finish_backward() {
  Unit& root = *units_[0];
  if (!root.gathered) return;
  std::vector<torch::Tensor> grads;
  for (auto& p : root.params) grads.push_back(p.tensor.grad());
  reduce_grads(root, grads);
  release(root);
}

void ShardedModel::release_root() { release(*units_[0]); }

std::vector<std::pair<std::string, torch::Tensor>> ShardedModel::gather_named(const std::vector<torch::Tensor>& unit_shards) {
  MERIDIAN_ASSERT(unit_shards.size() == units_.size(), "gather_named: {} shards for {} units", unit_shards.size(), units_.size());
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> by_name;
  const bool root = group_.rank() == 0;
  for (size_t u = 0; u < units_.size(); ++u) {
    torch::Tensor full = root ? torch::empty({units_[u]->padded}, unit_shards[u].options().requires_grad(false)) : torch::Tensor();
    group_.gather_to_rank0(unit_shards[u], full);
    if (!root) continue;
    for (const auto& p : units_[u]->params) by_name[p.name] = full.narrow(0, p.offset, p.numel).view(p.shape);
  }
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (!root) return out;
  // In the module's order, as named_parameters() lists them.
  for (auto& item : model_->named_parameters()) out.emplace_back(item.key(), by_name.at(item.key()));
  return out;
}

std::string ShardedModel::scatter_named(const std::vector<std::pair<std::string, torch::Tensor>>& full,
                                        const std::vector<torch::Tensor>& unit_shards) const {
  if (std::string err = check_named(full); !err.empty()) return err;
  std::map<std::string, torch::Tensor> by_name(full.begin(), full.end());
  torch::NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    const torch::Tensor flat = flatten(units_[u]->params, units_[u]->padded, [&](const Unit::Param& p) { return by_name.at(p.name); },
                                       unit_shards[u].options().requires_grad(false));
    const int64_t n = unit_shards[u].numel();
    torch::Tensor dst = unit_shards[u];
    dst.detach().copy_(flat.narrow(0, group_.rank() * n, n));
  }
  return "";
}

std::string ShardedModel::check_named(const std::vector<std::pair<std::string, torch::Tensor>>& full) const {
  std::map<std::string, torch::Tensor> by_name(full.begin(), full.end());
  for (const auto& u : units_) {
    for (const auto& p : u->params) {
      auto it = by_name.find(p.name);
      if (it == by_name.end()) return "no tensor '" + p.name + "'";
      if (it->second.sizes().vec() != p.shape)
        return fmt::format("tensor '{}' has shape {}, the model needs {}", p.name, c10::str(it->second.sizes()), c10::str(p.shape));
    }
  }
  return "";
}

void ShardedModel::scatter_named_from_rank0(const std::vector<std::pair<std::string, torch::Tensor>>& full,
                                            const std::vector<torch::Tensor>& unit_shards) {
  MERIDIAN_ASSERT(unit_shards.size() == units_.size(), "scatter_named_from_rank0: {} shards for {} units", unit_shards.size(), units_.size());
  const bool root = group_.rank() == 0;
  MERIDIAN_ASSERT(!root || check_named(full).empty(), "scatter_named_from_rank0: {}", check_named(full));
  std::map<std::string, torch::Tensor> by_name(full.begin(), full.end());
  torch::NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    const auto options = unit_shards[u].options().requires_grad(false);
    const torch::Tensor flat = root ? flatten(units_[u]->params, units_[u]->padded, [&](const Unit::Param& p) { return by_name.at(p.name); }, options)
                                    : torch::Tensor();
    torch::Tensor dst = unit_shards[u].detach();
    group_.scatter_from_rank0(flat, dst);
  }
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ShardedModel::parameter_shapes() const {
  std::map<std::string, std::vector<int64_t>> by_name;
  for (const auto& u : units_)
    for (const auto& p : u->params) by_name[p.name] = p.shape;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (auto& item : model_->named_parameters()) out.emplace_back(item.key(), by_name.at(item.key()));
  return out;
}

}  // namespace meridian::train
