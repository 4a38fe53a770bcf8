// meridian: one binary, one subcommand per job. This file only parses arguments and calls the
// libraries; it reads as the table of contents of what Meridian can do.
//
//   meridian train     [--config F | --preset NAME] [--set k=v ...] [--resume DIR]
//                      [--coordinator HOST:PORT --token-file F [--listen HOST:PORT]]   DiLoCo across nodes
//   meridian info      --model NAME            parameters, FLOPs/token, memory (no allocation)
//   meridian tokenize  --input FILES --output DIR [--doc-separator S] [--val-fraction X]
//   meridian bench step --model NAME [--nproc-per-node G]   inner-step throughput and MFU
//   meridian bench allreduce --peers N --size BYTES --codec C   all-reduce vs c10d Gloo
//   meridian config    [--list | --print]      every option, or the resolved config
//   meridian coordinator --listen HOST:PORT --token-file F   the run's membership coordinator
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "bench_allreduce.h"
#include "config/config.h"
#include "core/fault.h"
#include "core/malloc_tuning.h"
#include "data/tokenize.h"
#include "data/tokenizer.h"
#include "io/checkpoint.h"
#include "meridian/coordinator_cmd.h"
#include "meridian/local_launch.h"
#include "io/safetensors.h"
#include "metrics/model_stats.h"
#include "net/membership/wire.h"
#include "net/rank_ring.h"
#include "net/transport/socket_util.h"
#include "train/elastic.h"
#include "train/trainer.h"

using namespace meridian;

namespace {

// One-line cause, then the hint, then a non-zero exit: the contract for every user error.
int fail(const Status& status) {
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  if (!status.hint().empty()) std::fprintf(stderr, "hint: %s\n", status.hint().c_str());
  return 2;
}

struct ConfigArgs {
  std::string config_file;
  std::string preset;
  std::vector<std::string> overrides;
};

void add_config_args(CLI::App* cmd, ConfigArgs& args) {
  cmd->add_option("--config", args.config_file, "TOML config file");
  cmd->add_option("--preset", args.preset, "embedded preset: " + fmt::format("{}", fmt::join(preset_names(), ", ")));
  cmd->add_option("--set", args.overrides, "override one option, key=value (repeatable)");
}

Result<Config> resolve_config(const ConfigArgs& args, const std::string& fallback_preset) {
  if (!args.config_file.empty() && !args.preset.empty())
    return Status::error("--config and --preset both given", "pass one of them");
  std::string source = !args.config_file.empty() ? args.config_file : !args.preset.empty() ? args.preset : fallback_preset;
  if (!args.config_file.empty() && source.size() < 5) source = args.config_file;
  if (!args.config_file.empty() && source.substr(source.size() - 5) != ".toml")
    return Status::error(args.config_file + ": a config file must end in .toml", "rename it, or use --preset for an embedded preset");
  return load_config(source, args.overrides);
}

// --resume: the checkpoint's own config, then --config/--preset if given (same model shape
// required, checked when loading), then --set.
Result<Config> resume_config(const ConfigArgs& args, const std::string& checkpoint_dir) {
  if (!args.config_file.empty() || !args.preset.empty()) return resolve_config(args, "demo");
  auto state = io::SafetensorsFile::open((std::filesystem::path(checkpoint_dir) / "state.safetensors").string());
  if (!state) return state.status();
  auto it = state->metadata().find("meridian.config");
  if (it == state->metadata().end())
    return Status::error(checkpoint_dir + "/state.safetensors: no saved config", "pass --config with the run's config file");
  Config config;
  MERIDIAN_RETURN_IF_ERROR(apply_toml(config, it->second, checkpoint_dir + " (saved config)"));
  config.train.stop_at_step = 0;  // a resumed run goes on to train.steps unless told otherwise
  MERIDIAN_RETURN_IF_ERROR(apply_overrides(config, args.overrides));
  MERIDIAN_RETURN_IF_ERROR(validate(config));
  return config;
}

struct JoinArgs {
  std::string coordinator;  // HOST:PORT; empty: train alone
  std::string token_file;
  std::string listen;        // empty: this host's address towards the coordinator, port 0
};

// SIGINT/SIGTERM: stop after the current step, save, leave the run. A node blocked at a round
// start (waiting for the others) is ended by a watchdog after a grace period; closing its
// connections tells the coordinator at once. A second signal ends the process at once.
std::atomic<bool> g_stop{false};
void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) std::_Exit(128 + sig);
  const char msg[] = "# signal: stopping after this step, then leaving the run\n";
  [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
}
void watch_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::thread([] {
    while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::this_thread::sleep_for(std::chrono::seconds(20));
    std::fprintf(stderr, "# still busy 20 s after the signal: exiting now\n");
    std::_Exit(130);
  }).detach();
}

// A local rank started by launch_local_ranks joins its node's local group (train/fsdp.h), which
// the trainer then shards the model over.
Status join_local_group(const LocalRank& local, std::unique_ptr<train::LocalGroup>* group, train::TrainerOptions* options) {
  const char* timeout = std::getenv("MERIDIAN_LOCAL_RENDEZVOUS_TIMEOUT_MS");
  auto connected = train::LocalGroup::connect(local.rendezvous, local.rank, local.world,
                                              std::chrono::milliseconds(timeout ? std::atoll(timeout) : 60'000));
  if (!connected) return connected.status();
  *group = std::move(connected.value());
  options->local_group = group->get();
  return Status::ok();
}

int cmd_train(const ConfigArgs& args, const std::string& resume, const JoinArgs& join, char** argv) {
  std::string checkpoint;
  Result<Config> config = Status::error("unset");
  if (!resume.empty()) {
    auto dir = io::resolve_checkpoint(resume);
    if (!dir) return fail(dir.status());
    checkpoint = dir.value();
    config = resume_config(args, checkpoint);
  } else {
    config = resolve_config(args, "demo");
  }
  if (!config) return fail(config.status());

  // train.nproc_per_node > 1: this process launches the node's local ranks and waits for them.
  const LocalRank local = local_rank_from_env();
  const int nproc = static_cast<int>(config->train.nproc_per_node);
  if (nproc > 1 && local.rendezvous.empty()) return launch_local_ranks(nproc, config->run.dir, argv);
  if (!local.rendezvous.empty() && local.world != nproc)
    return fail(Status::error(fmt::format("local rank {} was started for {} ranks, but train.nproc_per_node is {}", local.rank, local.world, nproc),
                              "start the ranks with `meridian train --nproc-per-node G`, not by hand"));

  std::printf("# meridian train: resolved config (hash %s)\n%s\n", config_hash(config.value()).c_str(), to_toml(config.value()).c_str());
  const auto stats = metrics::model_stats(config->model, config->train.seq_len);
  std::printf("# model %s: %.3fM parameters, %.3g FLOPs/token\n", config->model.name.c_str(), stats.params_total / 1e6, stats.flops_per_token);
  if (!checkpoint.empty()) std::printf("# resuming from %s\n", checkpoint.c_str());

  train::TrainerOptions options;
  options.resume = checkpoint;
  options.stop = &g_stop;
  std::unique_ptr<train::LocalGroup> group;
  if (nproc > 1) {
    if (Status st = join_local_group(local, &group, &options); !st.is_ok()) return fail(st);
    std::printf("# local rank %d of %d: model sharded across the node's ranks (FSDP over Gloo)\n", local.rank, nproc);
  }
  std::unique_ptr<train::ElasticRounds> rounds;
  std::string token;
  if (!join.coordinator.empty()) {
    if (!config->diloco.enabled)
      return fail(Status::error("--coordinator given, but diloco.enabled is false", "add --set diloco.enabled=true (nodes meet once per DiLoCo round)"));
    if (join.token_file.empty()) return fail(Status::error("--coordinator needs --token-file", "pass the file holding the run token"));
    auto read = net::membership::read_token_file(join.token_file);
    if (!read) return fail(read.status());
    token = read.value();
  }
  // With train.nproc_per_node > 1 the node meets the run through local rank 0, and local rank
  // r > 0 all-reduces its shard on a ring of its own (train/local_ranks.cpp): it listens on the
  // node's host and tells rank 0 its address, which rank 0 registers with the node.
  std::string listen_address = join.listen;
  std::unique_ptr<net::RankRing> rank_ring;
  if (!join.coordinator.empty() && listen_address.empty()) {
    // Other nodes connect here: the address this host uses to reach the coordinator.
    auto hp = net::split_host_port(join.coordinator);
    if (!hp) return fail(Status::error("--coordinator: " + hp.status().message(), "pass HOST:PORT"));
    auto remote = net::resolve(hp->first, hp->second);
    if (!remote) return fail(remote.status());
    auto towards = net::local_address_towards(remote.value());
    if (!towards) return fail(towards.status());
    listen_address = towards.value() + ":0";
  }
  if (!join.coordinator.empty() && local.rank > 0) {
    auto hp = net::split_host_port(listen_address, /*allow_port_zero=*/true);
    if (!hp) return fail(Status::error("--listen: " + hp.status().message(), "pass HOST:PORT"));
    auto ring = net::RankRing::listen(token, hp->first + ":0");
    if (!ring) return fail(ring.status());
    rank_ring = std::move(ring.value());
    group->put("ring_address." + std::to_string(local.rank), rank_ring->address());
    options.rank_ring = rank_ring.get();
  }
  if (!join.coordinator.empty() && local.rank == 0) {
    train::ElasticOptions eo;
    eo.comm.coordinator_address = join.coordinator;
    eo.comm.token = token;
    eo.comm.listen_address = listen_address;
    for (int r = 1; r < nproc; ++r) eo.comm.rank_addresses.push_back(group->take("ring_address." + std::to_string(r)));
    eo.comm.topology_timeout_ms = static_cast<int64_t>(config->diloco.round_timeout_s * 1000);
    eo.codec = *net::parse_codec(config->diloco.codec);
    eo.min_nodes = static_cast<size_t>(config->diloco.min_nodes);
    eo.has_state = !checkpoint.empty();
    auto connected = train::ElasticRounds::connect(eo);
    if (!connected) return fail(connected.status());
    rounds = std::move(connected.value());
    options.round_sync = rounds.get();
  }
  auto trainer = train::Trainer::create(config.value(), options);
  if (!trainer) return fail(trainer.status());
  std::printf("# %d threads, peak %.1f GFLOP/s (fp32 matmul)%s\n", torch::get_num_threads(), trainer.value()->peak_flops() / 1e9,
              config->run.peak_tflops > 0 ? " from run.peak_tflops" : " measured");
  std::fflush(stdout);

  auto summary = trainer.value()->run();
  if (rounds) {
    const Status left = rounds->leave();
    if (!left.is_ok()) std::fprintf(stderr, "# leaving the run: %s\n", left.message().c_str());
  }
  if (!summary) return fail(summary.status());
  const auto& s = summary.value();
  std::printf("\n# done: steps %lld-%lld in %.1f s, %.0f tokens/s\n", static_cast<long long>(s.first_step), static_cast<long long>(s.last_step),
              s.seconds, s.tokens_per_s);
  std::printf("# train loss %.4f (first step) -> %.4f (mean of the last 20 steps) nats/token", s.first_loss, s.final_loss);
  if (s.val_loss) std::printf(", validation loss %.4f (ppl %.2f)", *s.val_loss, std::exp(*s.val_loss));
  std::printf("\n");
  if (s.unigram_entropy > 0) {
    const double reference = s.val_loss ? *s.val_loss : s.final_loss;
    std::printf("# unigram entropy of the training data: %.4f nats/token; the model is %.4f nats/token below it (%.1f%%)\n",
                s.unigram_entropy, s.unigram_entropy - reference, 100.0 * (s.unigram_entropy - reference) / s.unigram_entropy);
  }
  if (!s.checkpoint.empty()) std::printf("# checkpoint: %s\n", s.checkpoint.c_str());
  std::printf("# state hash: %s\n", s.state_hash.c_str());
  if (s.interrupted) {
    std::printf("# stopped by a signal at step %lld%s\n", static_cast<long long>(s.last_step), rounds ? "; left the run" : "");
    return 130;
  }
  return 0;
}

int cmd_info(const std::string& model_name, const std::string& config_file, std::vector<std::string> overrides, int64_t nproc) {
  ConfigArgs args;
  if (!config_file.empty()) args.config_file = config_file;
  else args.preset = model_name;
  args.overrides = std::move(overrides);
  if (nproc > 0) args.overrides.push_back("train.nproc_per_node=" + std::to_string(nproc));
  auto config = resolve_config(args, "demo");
  if (!config) return fail(config.status());
  const auto stats = metrics::model_stats(config->model, config->train.seq_len);
  std::printf("%s\n", metrics::model_stats_json(config->model, stats, config->train, config->diloco.enabled).c_str());
  return 0;
}

int cmd_tokenize(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer_name,
                 const data::TokenizeOptions& options) {
  auto tokenizer = data::make_tokenizer(tokenizer_name);
  if (!tokenizer) return fail(tokenizer.status());
  data::TokenizeOptions with_progress = options;
  if (isatty(fileno(stderr))) with_progress.on_progress = data::stderr_progress_bar();
  auto stats = data::tokenize_files(inputs, output, *tokenizer.value(), with_progress);
  if (!stats) return fail(stats.status());
  const auto& s = stats.value();
  std::printf("tokenized %llu documents with %s, %.2f MB in %.2f s (%.1f MB/s): %llu train tokens, %llu val tokens, %d shards in %s\n",
              static_cast<unsigned long long>(s.documents), tokenizer.value()->name().c_str(), s.bytes_in / 1e6, s.seconds, s.bytes_in / 1e6 / std::max(s.seconds, 1e-9),
              static_cast<unsigned long long>(s.train_tokens), static_cast<unsigned long long>(s.val_tokens), s.shards, output.c_str());
  if (options.val_fraction > 0.0 && s.val_tokens == 0) {
    std::fprintf(stderr,
                 "warning: no document went to validation (%llu documents; every %lld-th is held out)\n"
                 "hint: a .txt file is one document unless --doc-separator S splits it at lines equal to S (e.g. %% in fortune files); "
                 "or train with data.val_path=\"\" (no validation)\n",
                 static_cast<unsigned long long>(s.documents), static_cast<long long>(std::llround(1.0 / options.val_fraction)));
  }
  return 0;
}

// Inner-step throughput on synthetic tokens: what bench/bench_step.sh compares with PyTorch.
// With --nproc-per-node G the launcher starts G local ranks that shard the model (FSDP over
// Gloo), each with train.batch_size rows: the figures are for the node, G x batch per step.
int cmd_bench_step(const ConfigArgs& args, int64_t steps, int64_t warmup, int nproc, char** argv) {
  auto config = resolve_config(args, "debug");
  if (!config) return fail(config.status());
  if (nproc > 0) config->train.nproc_per_node = nproc;
  const int G = static_cast<int>(config->train.nproc_per_node);
  const LocalRank local = local_rank_from_env();
  if (G > 1 && local.rendezvous.empty()) {
    std::string dir = (std::filesystem::temp_directory_path() / "meridian-bench-XXXXXX").string();
    if (::mkdtemp(dir.data()) == nullptr)
      return fail(Status::error("cannot create a directory for the local ranks' rendezvous in " +
                                std::filesystem::temp_directory_path().string(), "set TMPDIR to a writable directory"));
    const int rc = launch_local_ranks(G, dir, argv);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return rc;
  }
  train::TrainerOptions options;
  options.out = nullptr;
  options.write_run_dir = false;
  options.synthetic_data = true;
  std::unique_ptr<train::LocalGroup> group;
  if (G > 1)
    if (Status st = join_local_group(local, &group, &options); !st.is_ok()) return fail(st);
  config->train.steps = steps + warmup;
  auto trainer = train::Trainer::create(config.value(), options);
  if (!trainer) return fail(trainer.status());
  auto& t = *trainer.value();
  for (int64_t i = 0; i < warmup; ++i) t.train_step();
  double seconds = 0;
  int64_t tokens = 0;
  for (int64_t i = 0; i < steps; ++i) {
    auto m = t.train_step();
    seconds += m.step_seconds;
    tokens += G * config->train.batch_size * config->train.seq_len * config->train.grad_accum;
  }
  if (local.rank != 0) return 0;
  const double tps = tokens / seconds;
  const double fpt = metrics::model_stats(config->model, config->train.seq_len).flops_per_token;
  std::printf("{\"impl\": \"meridian\", \"model\": \"%s\", \"nproc\": %d, \"threads\": %d, \"batch\": %lld, \"seq_len\": %lld, \"steps\": %lld, "
              "\"step_s\": %.5f, \"tokens_per_s\": %.1f, \"mfu\": %.4f, \"peak_gflops\": %.1f}\n",
              config->model.name.c_str(), G, torch::get_num_threads(), static_cast<long long>(config->train.batch_size),
              static_cast<long long>(config->train.seq_len), static_cast<long long>(steps), seconds / steps, tps,
              fpt * tps / (G * t.peak_flops()), G * t.peak_flops() / 1e9);  // the node: G ranks
  return 0;
}

int cmd_config(const ConfigArgs& args, bool list) {
  if (list) {
    Config defaults;
    for (const auto& row : option_table(defaults)) {
      std::string value = std::visit([](auto* p) { return fmt::format("{}", *p); }, row.value);
      std::printf("%-24s = %-16s %s%s\n", row.key.c_str(), value.c_str(), row.help.c_str(), row.unit.empty() ? "" : (" [" + row.unit + "]").c_str());
    }
    return 0;
  }
  auto config = resolve_config(args, "demo");
  if (!config) return fail(config.status());
  std::printf("%s", to_toml(config.value()).c_str());
  return 0;
}


// OpenMP workers that spin while waiting starve every other thread and process on the machine
// (the comms threads, data loading, other ranks, a parallel test run): on a busy 2-core machine
// a training step became 20x slower. libgomp reads its wait policy only when it loads, so when
// the user has not chosen one, the binary restarts itself once with OMP_WAIT_POLICY=PASSIVE.
// Set OMP_WAIT_POLICY=ACTIVE to keep spinning workers on a dedicated machine.
void ensure_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then go on as we are
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_openmp_wait(argv);
  // Test fault points (core/fault.h): armed here, for every subcommand, and nowhere else.
  if (meridian::Status st = meridian::fault::arm_from_env(); !st.is_ok()) return fail(st);
  meridian::keep_freed_heap_memory();
  CLI::App app{"Meridian: train Llama models across far-apart machines (DiLoCo, int8 all-reduce, elastic membership)"};
  app.require_subcommand(1);

  ConfigArgs train_args;
  std::string resume;
  auto* train = app.add_subcommand("train", "train a model (the embedded demo config by default)");
  add_config_args(train, train_args);
  train->add_option("--resume", resume, "continue from a checkpoint or run directory");
  int64_t nproc_per_node = 0;
  train->add_option("--nproc-per-node", nproc_per_node, "local ranks, one process each, that shard the model (train.nproc_per_node)")
      ->check(CLI::Range(1, 64));
  JoinArgs join;
  train->add_option("--coordinator", join.coordinator, "HOST:PORT of the run's coordinator: train as one DiLoCo node of it");
  train->add_option("--token-file", join.token_file, "file holding the run token (with --coordinator)");
  train->add_option("--listen", join.listen,
                    "HOST:PORT for the other nodes to reach this one (default: this host's address towards the coordinator, port 0)");

  std::string info_model = "demo", info_config;
  auto* info = app.add_subcommand("info", "parameter count, FLOPs per token and memory of a model, as JSON");
  info->add_option("--model", info_model, "preset name: " + fmt::format("{}", fmt::join(preset_names(), ", ")));
  info->add_option("--config", info_config, "or a TOML config file");
  std::vector<std::string> info_overrides;
  int64_t info_nproc = 0;
  info->add_option("--set", info_overrides, "override one option, key=value (repeatable): train.batch_size, train.bf16, ...");
  info->add_option("--nproc-per-node", info_nproc, "plan the memory of one of G local ranks (train.nproc_per_node)")->check(CLI::Range(1, 64));

  std::vector<std::string> tok_inputs;
  std::string tok_output, tok_name = "bytes";
  data::TokenizeOptions tok_options;
  auto* tokenize = app.add_subcommand("tokenize", "turn .txt/.jsonl files into token shards");
  tokenize->add_option("--input", tok_inputs, "input files (.txt, .jsonl)")->required()->check(CLI::ExistingFile);
  tokenize->add_option("--output", tok_output, "output directory (train/ and val/ inside)")->required();
  tokenize->add_option("--tokenizer", tok_name, "bytes | llama3 | a tokenizer.json or tiktoken ranks file");
  tokenize->add_option("--threads", tok_options.threads, "encoding threads (0: all cores)");
  tokenize->add_option("--doc-separator", tok_options.doc_separator, "in .txt files, a line equal to this ends a document");
  tokenize->add_option("--text-field", tok_options.text_field, "in .jsonl files, the field holding the text");
  tokenize->add_option("--val-fraction", tok_options.val_fraction, "share of documents for validation")->check(CLI::Range(0.0, 0.5));
  tokenize->add_option("--shard-tokens", tok_options.shard_tokens, "tokens per shard file");

  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  ConfigArgs bench_args;
  std::string bench_model;
  int64_t bench_steps = 10, bench_warmup = 2;
  auto* bench_step = bench->add_subcommand("step", "inner training step throughput and MFU on synthetic tokens");
  add_config_args(bench_step, bench_args);
  bench_step->add_option("--model", bench_model, "preset name (same as --preset)");
  bench_step->add_option("--steps", bench_steps, "timed steps");
  bench_step->add_option("--warmup", bench_warmup, "untimed steps first");
  int64_t bench_nproc = 0;
  bench_step->add_option("--nproc-per-node", bench_nproc, "local ranks sharding the model (FSDP), batch_size rows each")
      ->check(CLI::Range(1, 64));

  auto* bench_allreduce = bench->add_subcommand(
      "allreduce", "all-reduce of --size bytes across --peers local peers with --codec, against c10d Gloo (see bench/allreduce)");
  bench_allreduce->allow_extras();
  bench_allreduce->prefix_command();

  ConfigArgs config_args;
  bool config_list = false;
  auto* config = app.add_subcommand("config", "print the resolved config, or every option with its default");
  add_config_args(config, config_args);
  config->add_flag("--list", config_list, "every option with its default, unit and help");

  std::string coord_listen = "0.0.0.0:29500", coord_token_file, coord_log;
  int coord_timeout_ms = 10000, coord_interval_ms = 0, coord_holder_wait_ms = 60000;
  auto* coordinator = app.add_subcommand("coordinator", "run the coordinator of a run: membership, epochs, heartbeats, abort");
  coordinator->add_option("--listen", coord_listen, "HOST:PORT to listen on (port 0: the OS picks; printed)");
  coordinator->add_option("--token-file", coord_token_file, "file holding the run token every peer must prove")->required();
  coordinator->add_option("--heartbeat-timeout-ms", coord_timeout_ms, "a peer silent this long is removed");
  coordinator->add_option("--heartbeat-interval-ms", coord_interval_ms, "how often peers heartbeat (0: a quarter of the timeout)");
  coordinator->add_option("--log", coord_log, "append the run log (JSON lines: joins, leaves, evictions, rounds) to this file");
  coordinator->add_option("--holder-wait-ms", coord_holder_wait_ms,
                          "how long syncs wait for a holder of the run's newest state to come back before going on from an older one");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train) {
      if (nproc_per_node > 0) train_args.overrides.push_back("train.nproc_per_node=" + std::to_string(nproc_per_node));
      watch_stop_signals();  // a launcher of local ranks replaces the handlers with its own
      return cmd_train(train_args, resume, join, argv);
    }
    if (*info) return cmd_info(info_model, info_config, info_overrides, info_nproc);
    if (*tokenize) return cmd_tokenize(tok_inputs, tok_output, tok_name, tok_options);
    if (*bench_step) {
      if (!bench_model.empty()) bench_args.preset = bench_model;
      return cmd_bench_step(bench_args, bench_steps, bench_warmup, static_cast<int>(bench_nproc), argv);
    }
    if (*config) return cmd_config(config_args, config_list);
    if (*coordinator) return run_coordinator_command(coord_listen, coord_token_file, coord_timeout_ms, coord_interval_ms, coord_log,
                                                       coord_holder_wait_ms);
    if (*bench_allreduce) {
      std::vector<std::string> args = bench_allreduce->remaining();
      std::vector<char*> argv_bench{const_cast<char*>("meridian bench allreduce")};
      for (auto& a : args) argv_bench.push_back(a.data());
      return run_allreduce_bench(static_cast<int>(argv_bench.size()), argv_bench.data());
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: libtorch: %s\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
