#include "train/trainer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <deque>
#include <functional>
#include <numeric>
#include <cmath>
#include <filesystem>
#include <thread>

#include "core/assert.h"
#include "core/file.h"
#include "core/hash.h"
#include "data/tokenizer.h"
#include "io/checkpoint.h"
#include "metrics/model_stats.h"
#include "train/autocast.h"
#include "train/schedule.h"

namespace fs = std::filesystem;

namespace meridian::train {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kSummaryWindow = 20;  // steps averaged into the summary's final training loss
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t total = static_cast<int64_t>(s + 0.5);
  if (total >= 3600) return fmt::format("{}h{:02}m", total / 3600, (total % 3600) / 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace

double measure_matmul_flops(const torch::Device& device, bool bf16) {
  torch::NoGradGuard no_grad;
  const int64_t n = device.is_cuda() ? 4096 : 512;
  const auto options = torch::TensorOptions().device(device).dtype(bf16 && device.is_cuda() ? torch::kBFloat16 : torch::kFloat);
  auto a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  auto c = torch::matmul(a, b);  // warm up
  c.sum().item<double>();        // waits for the device
  int64_t iters = 0;
  const auto t0 = Clock::now();
  while (seconds_since(t0) < 0.2) {
    c = torch::matmul(a, b);
    ++iters;
    if (device.is_cuda()) c.sum().item<double>();
  }
  return 2.0 * n * n * n * static_cast<double>(iters) / seconds_since(t0);
}

Trainer::Trainer(const Config& config, TrainerOptions options) : config_(config), options_(std::move(options)) {}

Result<std::unique_ptr<Trainer>> Trainer::create(const Config& config, TrainerOptions options) {
  std::unique_ptr<Trainer> t(new Trainer(config, std::move(options)));
  const auto& tc = t->config_.train;
  const int G = t->local_world();
  // The cores are split among the local ranks unless train.threads says otherwise.
  torch::set_num_threads(tc.threads > 0 ? static_cast<int>(tc.threads)
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(G))));
  torch::manual_seed(static_cast<uint64_t>(tc.seed));
  if (t->config_.train.device == "cuda") {
    if (!torch::cuda::is_available())
      return Status::error("train.device is cuda, but libtorch sees no CUDA device", "set train.device=cpu, or build against a CUDA libtorch");
    t->device_ = torch::Device(torch::kCUDA);
  }
  t->model_ = model::Llama(t->config_.model);  // initialised on the CPU so the init is device-independent
  t->model_->to(t->device_);
  NamedTensors named;
  if (G > 1) {
    if (t->device_.is_cuda())
      return Status::error("train.nproc_per_node > 1 on CUDA is not supported yet (the local group is Gloo on the CPU)",
                           "set train.device=cpu, or train.nproc_per_node=1");
    t->fsdp_ = std::make_unique<ShardedModel>(t->model_, *t->options_.local_group);
    named = t->fsdp_->shards();
  } else {
    for (auto& item : t->model_->named_parameters()) named.emplace_back(item.key(), item.value());
  }
  for (auto& [name, p] : named) t->params_.push_back(p);
  t->optimizer_ = std::make_unique<AdamW>(named, AdamWOptions{tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  if (t->config_.diloco.enabled) {
    t->outer_ = std::make_unique<OuterOptimizer>(named, OuterOptions{t->config_.diloco.outer_lr, t->config_.diloco.outer_momentum});
    if (t->overlapped()) {
      t->start_ = t->outer_->theta().clone();
      t->in_flight_ = torch::empty_like(t->start_);
    }
  }
  if (!t->options_.round_sync) t->options_.round_sync = &t->local_reducer_;
  t->flops_per_token_ = metrics::model_stats(t->config_.model, tc.seq_len).flops_per_token;
  t->peak_measured_ = t->config_.run.peak_tflops <= 0;
  t->peak_flops_ = t->peak_measured_ ? measure_matmul_flops(t->device_, tc.bf16) : t->config_.run.peak_tflops * 1e12;

  MERIDIAN_RETURN_IF_ERROR(t->init_data());
  if (G > 1) t->set_data_shard(t->options_.local_group->rank(), G);  // each rank its rows of the global batch
  if (!t->options_.resume.empty()) MERIDIAN_RETURN_IF_ERROR(t->load(t->options_.resume));

  if (t->writes_run_dir()) {
    std::error_code ec;
    const fs::path latest = fs::path(t->config_.run.dir) / "checkpoints" / "latest";
    if (t->options_.resume.empty() && fs::exists(latest, ec))
      return Status::error(t->config_.run.dir + " already holds a run (" + latest.string() + ")",
                           "continue it with --resume " + t->config_.run.dir + ", or choose another run.dir, or delete it");
    fs::create_directories(t->config_.run.dir, ec);
    if (ec) return Status::error(t->config_.run.dir + ": cannot create run directory (" + ec.message() + ")", "set run.dir to a writable path");
    MERIDIAN_RETURN_IF_ERROR(write_file_atomic((fs::path(t->config_.run.dir) / "config.toml").string(), to_toml(t->config_)));
    auto sink = metrics::JsonlSink::open((fs::path(t->config_.run.dir) / "metrics.jsonl").string());
    if (!sink) return sink.status();
    t->metrics_ = std::move(sink.value());
  }
  return t;
}

Status Trainer::init_data() {
  auto tokenizer = data::make_tokenizer(config_.data.tokenizer);
  if (!tokenizer)
    return Status::error("data.tokenizer: " + tokenizer.status().message(),
                         config_.data.tokenizer == "llama3" ? "run scripts/setup-tokenizer.sh to put the Llama-3 vocabulary in place"
                                                            : tokenizer.status().hint());
  bos_id_ = tokenizer.value()->bos_id();
  eos_id_ = tokenizer.value()->eos_id();
  if (options_.synthetic_data) return Status::ok();
  const auto& tc = config_.train;
  if (!config_.data.mixture.empty()) {
    // A mixture replaces data.train_path: its datasets are drawn in the configured proportions.
    auto entries = parse_mixture(config_.data.mixture);
    if (!entries) return entries.status();
    std::vector<data::MixtureSource> sources;
    for (const auto& e : entries.value()) sources.push_back({e.name, e.path, e.weight});
    auto mixture = data::MixtureLoader::open(sources, tc.seq_len, static_cast<uint64_t>(tc.seed));
    if (!mixture) return mixture.status();
    if (mixture->vocab_size() > static_cast<uint32_t>(config_.model.vocab_size))
      return Status::error(fmt::format("data.mixture: shards use a vocabulary of {} tokens, model.vocab_size is {}", mixture->vocab_size(),
                                       config_.model.vocab_size),
                           "set model.vocab_size to at least the tokenizer's vocabulary");
    mixture_.emplace(std::move(mixture.value()));
  }
  for (const auto& [key, path] : {std::pair{"data.train_path", mixture_ ? std::string() : config_.data.train_path},
                                  std::pair{"data.val_path", config_.data.val_path}}) {
    std::error_code ec;
    if (!path.empty() && !fs::exists(path, ec))
      return Status::error(fmt::format("{} '{}' does not exist", key, path),
                           "create shards with `meridian tokenize --input FILES --output DIR` (`make demo-data` for the demo corpus)");
  }
  if (mixture_) return init_val_data();
  auto train = data::TokenLoader::open(config_.data.train_path, tc.seq_len, static_cast<uint64_t>(tc.seed));
  if (!train) return Status::error(train.status().message(), train.status().hint().empty()
                                       ? "create shards with `meridian tokenize` (or `make demo-data` for the demo corpus)"
                                       : train.status().hint());
  if (train->vocab_size() > static_cast<uint32_t>(config_.model.vocab_size))
    return Status::error(fmt::format("{}: shards use a vocabulary of {} tokens, model.vocab_size is {}", config_.data.train_path,
                                     train->vocab_size(), config_.model.vocab_size),
                         "set model.vocab_size to at least the tokenizer's vocabulary");
  train_data_.emplace(std::move(train.value()));
  return init_val_data();
}

Status Trainer::init_val_data() {
  if (config_.data.val_path.empty()) return Status::ok();
  auto val = data::TokenLoader::open(config_.data.val_path, config_.train.seq_len, static_cast<uint64_t>(config_.train.seed) + 1);
  if (!val) return val.status();
  val_data_.emplace(std::move(val.value()));
  return Status::ok();
}

void Trainer::next_train_batch(torch::Tensor& inputs, torch::Tensor& targets) {
  const int64_t B = config_.train.batch_size;
  if (mixture_) {
    next_batch([&](int64_t* in, int64_t* tg) { mixture_->next_batch(B, in, tg); }, inputs, targets);
  } else if (train_data_) {
    next_batch([&](int64_t* in, int64_t* tg) { train_data_->next_batch(B, in, tg); }, inputs, targets);
  } else {
    // Synthetic tokens from our own RNG: benchmarks measure compute, not data.
    SplitMix64 rng(static_cast<uint64_t>(config_.train.seed) * 1000003 + synthetic_counter_++);
    const auto V = static_cast<uint64_t>(config_.model.vocab_size);
    next_batch(
        [&](int64_t* in, int64_t* tg) {
          for (int64_t i = 0; i < B * config_.train.seq_len; ++i) {
            in[i] = static_cast<int64_t>(rng.below(V));
            tg[i] = static_cast<int64_t>(rng.below(V));
          }
        },
        inputs, targets);
  }
}

void Trainer::next_batch(const std::function<void(int64_t*, int64_t*)>& fill, torch::Tensor& inputs, torch::Tensor& targets) {
  const auto B = config_.train.batch_size, T = config_.train.seq_len;
  inputs = torch::empty({B, T}, torch::kInt64);
  targets = torch::empty({B, T}, torch::kInt64);
  fill(inputs.data_ptr<int64_t>(), targets.data_ptr<int64_t>());
  inputs = inputs.to(device_);
  targets = targets.to(device_);
}

model::LossParts Trainer::forward_loss(const torch::Tensor& inputs, const torch::Tensor& targets, double z_loss_weight) {
  const auto& tc = config_.train;
  if (tc.loss_chunk_tokens <= 0) {  // the plain path: the logits of the whole micro-batch at once
    torch::Tensor logits;
    {
      AutocastGuard autocast(tc.bf16, device_.is_cuda());
      logits = fsdp_ ? model_->lm_head(fsdp_->hidden(inputs)).to(torch::kFloat) : model_->forward(inputs);  // f32 [B, T, V]
    }
    return model::lm_loss(logits, targets, z_loss_weight);
  }
  torch::Tensor hidden;
  {
    AutocastGuard autocast(tc.bf16, device_.is_cuda());
    hidden = fsdp_ ? fsdp_->hidden(inputs) : model_->hidden(inputs);
  }
  return model::chunked_lm_loss(hidden, model_->lm_head->weight, targets, z_loss_weight, tc.loss_chunk_tokens,
                                tc.bf16 ? std::optional(torch::kBFloat16) : std::nullopt);
}

StepMetrics Trainer::train_step() {
  const auto& tc = config_.train;
  const auto t0 = Clock::now();
  model_->train();
  optimizer_->zero_grad();

  // Forward and backward over grad_accum micro-batches; each contributes 1/grad_accum.
  double loss_sum = 0, z_sum = 0;
  for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
    torch::Tensor inputs, targets;
    next_train_batch(inputs, targets);
    const model::LossParts loss = forward_loss(inputs, targets, tc.z_loss_weight);
    (loss.total / static_cast<double>(tc.grad_accum)).backward();
    loss_sum += loss.ce.item<double>();
    z_sum += loss.z.item<double>();
  }
  const int G = local_world();
  if (fsdp_) {  // the root unit's gradients; the step's loss is the mean over the ranks' rows
    fsdp_->finish_backward();
    loss_sum = options_.local_group->all_reduce_sum(loss_sum) / G;
    z_sum = options_.local_group->all_reduce_sum(z_sum) / G;
  }

  // Clip (the norm over every rank's shards), then the AdamW step with this step's learning rate.
  StepMetrics m;
  m.step = step_ + 1;
  std::function<double(double)> sum_across;
  if (fsdp_) sum_across = [this](double v) { return options_.local_group->all_reduce_sum(v); };
  m.grad_norm = clip_grad_norm(params_, tc.grad_clip, sum_across);
  m.lr = wsd_lr(tc, m.step);
  optimizer_->step(m.lr);
  step_ = m.step;

  const int64_t tokens = tc.batch_size * tc.seq_len * tc.grad_accum * G;
  tokens_seen_ += tokens;
  m.loss = loss_sum / static_cast<double>(tc.grad_accum);
  m.z_loss = z_sum / static_cast<double>(tc.grad_accum);
  m.step_seconds = seconds_since(t0);
  m.tokens_per_s = static_cast<double>(tokens) / m.step_seconds;
  m.mfu = flops_per_token_ * m.tokens_per_s / (peak_flops_ * G);  // each rank measured its own share of the cores
  return m;
}

std::optional<double> Trainer::evaluate(int64_t batches) {
  if (!val_data_ || batches <= 0) return std::nullopt;
  torch::NoGradGuard no_grad;
  model_->eval();
  const auto saved = val_data_->cursor();
  val_data_->set_cursor({});  // the same sequences every time, so evaluations compare
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    torch::Tensor inputs, targets;
    next_batch([&](int64_t* in, int64_t* tg) { val_data_->next_batch(config_.train.batch_size, in, tg); }, inputs, targets);
    sum += forward_loss(inputs, targets, 0.0).ce.item<double>();
  }
  val_data_->set_cursor(saved);
  if (fsdp_) fsdp_->release_root();
  return sum / static_cast<double>(batches);
}

void Trainer::log_step(const StepMetrics& m, double eta_seconds) {
  if (options_.out) {
    std::fprintf(options_.out,
                 "step %6lld/%lld | loss %.4f | ppl %8.2f | lr %.2e | %7.0f tok/s | %s %5.1f%% | gnorm %6.3f | ETA %s\n",
                 static_cast<long long>(m.step), static_cast<long long>(config_.train.steps), m.loss, std::exp(m.loss), m.lr,
                 m.tokens_per_s, peak_measured_ ? "of matmul peak" : "MFU", 100.0 * m.mfu, m.grad_norm,
                 format_duration(eta_seconds).c_str());
    std::fflush(options_.out);
  }
  nlohmann::ordered_json j;
  j["type"] = "inner";
  j["step"] = m.step;
  j["loss"] = m.loss;
  j["ppl"] = std::exp(m.loss);
  j["z_loss"] = m.z_loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["step_s"] = m.step_seconds;
  j["tokens_per_s"] = m.tokens_per_s;
  j["mfu"] = m.mfu;
  j["mfu_peak"] = peak_measured_ ? "measured matmul" : "run.peak_tflops";
  j["tokens_seen"] = tokens_seen_;
  metrics_.write(j.dump());
}

Result<TrainSummary> Trainer::run() {
  const auto& tc = config_.train;
  const int64_t last = tc.stop_at_step > 0 ? tc.stop_at_step : tc.steps;
  TrainSummary summary;
  summary.first_step = step_ + 1;
  summary.unigram_entropy = train_data_ ? train_data_->unigram_entropy_nats() : 0.0;
  const auto t0 = Clock::now();
  const int64_t tokens_at_start = tokens_seen_;
  double avg_step_s = 0;
  std::deque<double> recent_losses;  // the last kSummaryWindow steps, for the summary

  bool first = true;
  while (true) {
    if (outer_ && step_ < last && !round_open_ && (first || step_ % config_.diloco.inner_steps == 0)) {
      MERIDIAN_RETURN_IF_ERROR(begin_round());  // a joiner's step jumps to the run's here
      if (first) summary.first_step = step_ + 1;
    }
    first = false;
    round_open_ = false;
    if (step_ >= last) break;
    bool stop = options_.stop && options_.stop->load();
    // The local ranks stop together, at the same step, whichever of them got the signal.
    if (fsdp_) stop = options_.local_group->all_reduce_sum(stop ? 1.0 : 0.0) > 0;
    if (stop) {
      summary.interrupted = true;
      MERIDIAN_RETURN_IF_ERROR(settle());
      if (options_.write_run_dir) {
        auto saved = save_checkpoint();
        if (!saved) return saved.status();
        summary.checkpoint = saved.value();
      }
      break;
    }
    if (overlapped()) {
      bool restarted = false;
      MERIDIAN_RETURN_IF_ERROR(catch_up_with_run(&restarted));
      if (restarted) continue;  // step_ is the run's now: the loop's top checks it again
    }
    StepMetrics m = train_step();
    if (m.step == summary.first_step) summary.first_loss = m.loss;
    avg_step_s = avg_step_s == 0 ? m.step_seconds : 0.9 * avg_step_s + 0.1 * m.step_seconds;
    recent_losses.push_back(m.loss);
    if (recent_losses.size() > kSummaryWindow) recent_losses.pop_front();
    summary.final_loss = std::accumulate(recent_losses.begin(), recent_losses.end(), 0.0) / static_cast<double>(recent_losses.size());
    if (!std::isfinite(m.loss))
      return Status::error(fmt::format("loss is {} at step {}", m.loss, m.step), "lower train.lr or raise train.warmup_steps");
    round_.compute_s += m.step_seconds;
    round_.loss_sum += m.loss;
    ++round_.steps;
    if (m.step % tc.log_every == 0 || m.step == last) {
      log_step(m, avg_step_s * static_cast<double>(last - m.step));
    }
    const bool checkpoint_now = options_.write_run_dir && ((tc.checkpoint_every > 0 && m.step % tc.checkpoint_every == 0) || m.step == last);
    if (outer_ && m.step % config_.diloco.inner_steps == 0) {
      // With overlap, nothing stays in flight at the last round, nor where a checkpoint is written.
      MERIDIAN_RETURN_IF_ERROR(overlapped() ? overlapped_outer_step(/*drain=*/m.step == last || checkpoint_now, m.step == last)
                                            : outer_step());
    }
    const bool eval_now = (tc.eval_every > 0 && m.step % tc.eval_every == 0) || m.step == last;
    if (eval_now) {
      summary.val_loss = evaluate(tc.eval_batches);
      if (summary.val_loss) {
        if (options_.out) std::fprintf(options_.out, "eval   step %lld | val loss %.4f | val ppl %.2f\n", static_cast<long long>(m.step), *summary.val_loss, std::exp(*summary.val_loss));
        nlohmann::ordered_json j{{"type", "eval"}, {"step", m.step}, {"val_loss", *summary.val_loss}, {"val_ppl", std::exp(*summary.val_loss)}};
        metrics_.write(j.dump());
      }
    }
    if (checkpoint_now) {
      MERIDIAN_RETURN_IF_ERROR(settle());  // a checkpoint between two round ends
      auto saved = save_checkpoint();
      if (!saved) return saved.status();
      summary.checkpoint = saved.value();
    }
  }
  MERIDIAN_RETURN_IF_ERROR(settle());  // train.stop_at_step between two round ends
  summary.last_step = step_;
  summary.seconds = seconds_since(t0);
  summary.tokens_per_s = static_cast<double>(tokens_seen_ - tokens_at_start) / std::max(summary.seconds, 1e-9);
  summary.state_hash = state_hash();
  return summary;
}

Status Trainer::begin_round() {
  round_ = Round{};
  round_.start = Clock::now();
  if (!fsdp_) {
    MERIDIAN_RETURN_IF_ERROR(options_.round_sync->begin_round(*this, &round_.stats));
    if (overlapped()) start_.copy_(outer_->theta());  // nothing in flight at this round start
    return Status::ok();
  }
  if (!outer_full_valid_) refresh_outer_full();
  if (!local_lead()) return follow_local_rank0(&round_.stats);
  return tell_local_ranks(options_.round_sync->begin_round(*this, &round_.stats), round_.stats);
}

void Trainer::restart_round(const RoundStats& carried) {
  if (options_.out) {
    std::fprintf(options_.out, "# this node was behind the run: its round is discarded; it trains the run's round %lld from step %lld\n",
                 static_cast<long long>(outer_->rounds() + 1), static_cast<long long>(step_));
    std::fflush(options_.out);
  }
  const RoundStats kept = carried;
  round_ = Round{};
  round_.start = Clock::now();
  round_.stats.joined = true;
  round_.stats.nodes = kept.nodes;
  round_.stats.state_bytes_downloaded = kept.state_bytes_downloaded;
  round_open_ = true;
  if (overlapped()) start_.copy_(outer_->theta());  // nothing in flight for this node now
}

Status Trainer::outer_step() {
  MERIDIAN_ASSERT(outer_ != nullptr, "outer_step without diloco.enabled");
  const auto t0 = Clock::now();
  torch::Tensor delta = outer_->pseudo_gradient();  // f32 [N], or this rank's shards with G > 1
  double local_norm = 0;
  MERIDIAN_RETURN_IF_ERROR(all_reduce_pseudo_gradient(delta, &local_norm));
  RoundStats& rs = round_.stats;
  if (rs.restarted) {
    restart_round(rs);
    return Status::ok();
  }
  outer_->step(delta);
  round_start_.reset();  // the round is over: the run's state is the current one
  if (fsdp_) {
    refresh_outer_full();  // for the hash, and the next round start's sync
    if (!local_lead()) return Status::ok();  // rank 0 reports the round
  }
  const double outer_s = seconds_since(t0);
  // Without overlap the compute stood still for the whole all-reduce.
  log_outer_round(round_, local_norm, outer_s, seconds_since(round_.start), rs.all_reduce_s);
  return Status::ok();
}

void Trainer::log_outer_round(const Round& round, double local_norm, double outer_s, double round_s, double wait_s) {
  const RoundStats& rs = round.stats;
  const NamedTensors& outer_state = fsdp_ ? outer_full_ : outer_->state();
  const double utilization = round_s > 0 ? round.compute_s / round_s : 0.0;
  const double loss = round.steps > 0 ? round.loss_sum / static_cast<double>(round.steps) : 0.0;
  const double gbit = rs.all_reduce_s > 0 ? rs.all_reduce_bytes_sent * 8.0 / rs.all_reduce_s / 1e9 : 0.0;
  const int64_t params = outer_state[0].second.numel();
  // What data parallel would send as fp32 gradients in a ring: 2 (n-1)/n * 32 bits per value per step.
  const double bits_per_param_step =
      round.steps > 0 ? rs.all_reduce_bytes_sent * 8.0 / static_cast<double>(params) / static_cast<double>(round.steps) : 0.0;
  const std::string hash = io::tensors_hash({{"theta", outer_state[0].second}});
  if (options_.out) {
    std::fprintf(options_.out,
                 "outer  round %lld | step %lld | nodes %d | loss %.4f | |delta| %.4f | all-reduce%s %.3f s %.2f MB %.3f Gbit/s%s | "
                 "barrier %.3f s | state sync %.3f s |%s util %.1f%% | theta %s\n",
                 static_cast<long long>(outer_->rounds()), static_cast<long long>(round.end_step >= 0 ? round.end_step : step_), rs.nodes, loss, local_norm,
                 rings_ ? fmt::format(" ({} rings)", local_world()).c_str() : "", rs.all_reduce_s,
                 rs.all_reduce_bytes_sent / 1e6, gbit, rs.retries > 0 ? fmt::format(" ({} retries)", rs.retries).c_str() : "",
                 rs.barrier_s, rs.state_sync_s, overlapped() ? fmt::format(" waited {:.3f} s |", wait_s).c_str() : "", 100.0 * utilization,
                 hash.substr(0, 16).c_str());
    std::fflush(options_.out);
  }
  nlohmann::ordered_json j{{"type", "outer"},
                           {"round", outer_->rounds()},
                           {"step", round.end_step >= 0 ? round.end_step : step_},
                           {"nodes", rs.nodes},
                           {"loss", loss},
                           {"ppl", std::exp(loss)},
                           {"pseudo_grad_norm", local_norm},
                           {"sync_s", rs.barrier_s + rs.state_sync_s + rs.all_reduce_s},
                           {"barrier_s", rs.barrier_s},
                           {"state_sync_s", rs.state_sync_s},
                           {"state_bytes_downloaded", rs.state_bytes_downloaded},
                           {"all_reduce_s", rs.all_reduce_s},
                           {"bytes_sent", rs.all_reduce_bytes_sent},
                           {"bits_per_param_step", bits_per_param_step},
                           {"rings", rings_ ? local_world() : 1},  // all-reduces in parallel, one per local rank
                           {"gbit_per_s", gbit},
                           {"retries", rs.retries},
                           {"joined", rs.joined},
                           {"overlap", config_.diloco.overlap},
                           {"wait_s", wait_s},
                           {"outer_s", outer_s},
                           {"round_s", round_s},
                           {"compute_s", round.compute_s},
                           {"utilization", utilization},
                           {"params", params},
                           {"outer_hash", hash}};
  metrics_.write(j.dump());
}

void Trainer::set_progress(int64_t step, int64_t tokens_seen) {
  step_ = step;
  tokens_seen_ = tokens_seen;
}

std::string Trainer::data_cursor() const {
  if (mixture_) return mixture_->cursor().to_json();
  const auto c = train_data_ ? train_data_->cursor() : data::LoaderCursor{};
  return nlohmann::ordered_json{{"epoch", c.epoch}, {"position", c.position}}.dump();
}

Status Trainer::set_data_cursor(const std::string& text) {
  if (mixture_) {
    auto cursor = data::MixtureCursor::from_json(text);
    if (!cursor) return cursor.status();
    return mixture_->set_cursor(cursor.value());
  }
  if (!train_data_) return Status::ok();  // synthetic data has no cursor
  data::LoaderCursor c;
  try {
    const auto j = nlohmann::json::parse(text);
    c.epoch = j.at("epoch").get<uint64_t>();
    c.position = j.at("position").get<uint64_t>();
  } catch (const std::exception& e) {
    return Status::error(std::string("data cursor is not {\"epoch\":E,\"position\":P}: ") + e.what(),
                         "every node of a run must train on the same data settings (data.mixture or data.train_path)");
  }
  if (c.position >= train_data_->num_sequences())
    return Status::error(fmt::format("data cursor {} is past the {} sequences of {}", c.position, train_data_->num_sequences(), config_.data.train_path),
                         "every node of a run must use the same data.train_path and train.seq_len");
  train_data_->set_cursor(c);
  return Status::ok();
}

void Trainer::set_data_shard(int rank, int world) {
  if (mixture_) mixture_->set_shard(rank, world);
  if (train_data_) train_data_->set_shard(rank, world);
}

std::vector<std::pair<std::string, torch::Tensor>> Trainer::full_parameters() {
  if (fsdp_) return fsdp_->gather_named(fsdp_->shard_tensors());
  io::NamedTensors out;
  for (auto& item : model_->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

// With G > 1 AdamW's slots are the units' shards, gathered here into the names a G = 1 run writes.
std::vector<std::pair<std::string, torch::Tensor>> Trainer::full_optimizer_state() {
  if (!fsdp_) return optimizer_->state();
  io::NamedTensors out;
  for (const std::string moment : {"exp_avg.", "exp_avg_sq."})
    for (auto& [name, t] : fsdp_->gather_named(moment_shards(moment))) out.emplace_back(moment + name, t);
  return out;
}

std::vector<torch::Tensor> Trainer::moment_shards(const std::string& moment) const {
  std::vector<torch::Tensor> out;
  for (const auto& [name, t] : moment_of(optimizer_->state(), moment)) out.push_back(t);
  return out;
}

// The outer state under the names a G = 1 run writes (gathered on local rank 0 with G > 1).
NamedTensors Trainer::full_outer_state() {
  if (!fsdp_) return outer_->state();
  NamedTensors out;
  for (const auto& [name, t] : outer_->state())
    if (torch::Tensor full = gather_flat(t); full.defined()) out.emplace_back(name, full);
  return out;
}

Result<std::string> Trainer::save_checkpoint() {
  io::NamedTensors model = full_parameters();
  io::NamedTensors state = full_optimizer_state();
  state.emplace_back("rng.torch_cpu", rng_state());
  if (outer_)
    for (auto& item : full_outer_state()) state.push_back(item);
  io::Metadata meta{{"meridian.optimizer_step", std::to_string(optimizer_->step_count())},
                    {"meridian.tokens_seen", std::to_string(tokens_seen_)},
                    {"meridian.config_hash", config_hash(config_)},
                    {"meridian.model_hash", model_hash(config_.model)},
                    {"meridian.config", to_toml(config_)},
                    {"meridian.bos_id", std::to_string(bos_id_)},
                    {"meridian.eos_id", std::to_string(eos_id_)}};
  if (outer_) meta["meridian.outer_rounds"] = std::to_string(outer_->rounds());
  if (mixture_) meta["meridian.data_mixture_cursor"] = mixture_->cursor().to_json();
  if (train_data_) {
    meta["meridian.data_epoch"] = std::to_string(train_data_->cursor().epoch);
    meta["meridian.data_position"] = std::to_string(train_data_->cursor().position);
  }
  if (!fsdp_) return io::save_checkpoint(config_.run.dir, step_, config_.model, model, state, meta, config_.train.keep_checkpoints);
  // Local rank 0 writes the whole (consolidated) checkpoint; the others wait for it.
  const bool writer = options_.local_group->rank() == 0;
  Result<std::string> saved = writer ? io::save_checkpoint(config_.run.dir, step_, config_.model, model, state, meta,
                                                           config_.train.keep_checkpoints)
                                     : Result<std::string>(std::string());
  const bool ok = options_.local_group->all_reduce_sum(writer && !saved ? 1.0 : 0.0) == 0;
  if (!ok && !writer)
    return Status::error("local rank 0 could not save the checkpoint of step " + std::to_string(step_), "see local rank 0's error");
  return saved;
}

Status Trainer::load(const std::string& checkpoint_dir) {
  auto loaded = io::load_checkpoint(checkpoint_dir);
  if (!loaded) return loaded.status();
  auto& ck = loaded.value();
  auto meta = [&](const std::string& key) -> Result<int64_t> {
    auto it = ck.meta.find(key);
    if (it == ck.meta.end()) return Status::error(checkpoint_dir + ": state.safetensors lacks metadata '" + key + "'", "the checkpoint is incomplete; use an earlier one");
    try {
      return static_cast<int64_t>(std::stoll(it->second));
    } catch (...) {
      return Status::error(checkpoint_dir + ": metadata '" + key + "' is not an integer: '" + it->second + "'");
    }
  };
  if (ck.meta["meridian.model_hash"] != model_hash(config_.model))
    return Status::error(checkpoint_dir + ": the checkpoint was written for another model shape than the config's",
                         "resume with the checkpoint's own config (omit --config) or fix the [model] section");

  // Weights: every parameter must be present with the same shape.
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> weights(ck.model.begin(), ck.model.end());
  // With G > 1 the module's parameters are freed between uses: ShardedModel::scatter_named
  // checks names and shapes below instead.
  auto params = fsdp_ ? torch::OrderedDict<std::string, torch::Tensor>() : model_->named_parameters();
  for (auto& item : params) {
    auto it = weights.find(item.key());
    if (it == weights.end()) return Status::error(checkpoint_dir + "/model.safetensors: missing tensor '" + item.key() + "'");
    if (it->second.sizes() != item.value().sizes())
      return Status::error(fmt::format("{}/model.safetensors: tensor '{}' has shape {}, the model needs {}", checkpoint_dir, item.key(),
                                       c10::str(it->second.sizes()), c10::str(item.value().sizes())));
    item.value().copy_(it->second);
  }
  auto opt_step = meta("meridian.optimizer_step");
  if (!opt_step) return opt_step.status();
  if (fsdp_) {  // this rank's slices of the consolidated tensors (any G, or a G = 1 checkpoint)
    std::string err = fsdp_->scatter_named(ck.model, fsdp_->shard_tensors());
    for (const std::string moment : {"exp_avg.", "exp_avg_sq."}) {
      if (!err.empty()) break;
      err = fsdp_->scatter_named(moment_of(ck.state, moment), moment_shards(moment));
      if (!err.empty()) err = "optimizer state (" + moment + "): " + err;
    }
    if (!err.empty()) return Status::error(checkpoint_dir + ": " + err);
    optimizer_->set_step_count(opt_step.value());
  } else {
    const std::string err = optimizer_->load_state(ck.state, opt_step.value());
    if (!err.empty()) return Status::error(checkpoint_dir + "/state.safetensors: " + err);
  }
  for (const auto& [name, t] : ck.state)
    if (name == "rng.torch_cpu") set_rng_state(t);
  if (outer_) {
    if (!ck.meta.count("meridian.outer_rounds"))
      return Status::error(checkpoint_dir + ": saved without DiLoCo (no outer state), but diloco.enabled is set",
                           "resume with diloco.enabled=false, or start the DiLoCo run from scratch");
    auto rounds = meta("meridian.outer_rounds");
    if (!rounds) return rounds.status();
    NamedTensors outer_state = ck.state;
    if (fsdp_) {  // this rank's shards of the one-rank layout
      outer_state.clear();
      for (const auto& [name, live] : outer_->state()) {
        auto it = std::find_if(ck.state.begin(), ck.state.end(), [&](const auto& item) { return item.first == name; });
        if (it == ck.state.end()) continue;  // load_state names it
        const int64_t n = parameter_count();
        if (it->second.numel() != n)
          return Status::error(fmt::format("{}/state.safetensors: tensor '{}' has {} values, the model needs {}", checkpoint_dir, name,
                                           it->second.numel(), n));
        torch::Tensor mine = torch::empty_like(live);
        const std::string err = fsdp_->scatter_named(split_flat(it->second.reshape({-1})), unit_views(mine));
        if (!err.empty()) return Status::error(checkpoint_dir + "/state.safetensors: " + name + ": " + err);
        outer_state.emplace_back(name, mine);
      }
    }
    const std::string outer_err = outer_->load_state(outer_state, rounds.value());
    if (!outer_err.empty()) return Status::error(checkpoint_dir + "/state.safetensors: " + outer_err, "resume with diloco.enabled as the run was saved");
  }

  auto step = meta("meridian.step");
  auto tokens = meta("meridian.tokens_seen");
  if (!step) return step.status();
  if (!tokens) return tokens.status();
  step_ = step.value();
  tokens_seen_ = tokens.value();
  if (mixture_) {
    auto it = ck.meta.find("meridian.data_mixture_cursor");
    if (it == ck.meta.end())
      return Status::error(checkpoint_dir + ": saved without data.mixture, but the config sets one",
                           "resume with the data settings the run was saved with");
    auto cursor = data::MixtureCursor::from_json(it->second);
    if (!cursor) return cursor.status().with_context(checkpoint_dir);
    MERIDIAN_RETURN_IF_ERROR(mixture_->set_cursor(cursor.value()).with_context(checkpoint_dir));
  }
  if (train_data_) {
    auto epoch = meta("meridian.data_epoch");
    auto position = meta("meridian.data_position");
    if (!epoch) return epoch.status();
    if (!position) return position.status();
    if (static_cast<uint64_t>(position.value()) >= train_data_->num_sequences())
      return Status::error(fmt::format("{}: data cursor {} is past the {} sequences of {}", checkpoint_dir, position.value(),
                                       train_data_->num_sequences(), config_.data.train_path),
                           "resume with the same data.train_path and train.seq_len as the run that saved it");
    train_data_->set_cursor({static_cast<uint64_t>(epoch.value()), static_cast<uint64_t>(position.value())});
  }
  return Status::ok();
}

std::string Trainer::state_hash() {
  io::NamedTensors all = full_parameters();
  for (auto& item : full_optimizer_state()) all.push_back(item);
  if (outer_)
    for (auto& item : full_outer_state()) all.push_back(item);
  const auto cursor = train_data_ ? train_data_->cursor() : data::LoaderCursor{};
  auto counters = torch::tensor({step_, optimizer_->step_count(), tokens_seen_, static_cast<int64_t>(cursor.epoch),
                                 static_cast<int64_t>(cursor.position)},
                                torch::kInt64);
  all.emplace_back("counters", counters);
  if (mixture_) {
    const std::string json = mixture_->cursor().to_json();
    all.emplace_back("mixture_cursor", torch::from_blob(const_cast<char*>(json.data()), {static_cast<int64_t>(json.size())}, torch::kUInt8).clone());
  }
  return io::tensors_hash(all);
}

}  // namespace meridian::train
