#include "io/checkpoint.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "core/fault.h"
#include "core/file.h"
#include "core/hash.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace meridian::io {

namespace {

Result<DType> to_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return DType::F64;
    case torch::kFloat32: return DType::F32;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kInt64: return DType::I64;
    case torch::kInt32: return DType::I32;
    case torch::kUInt8: return DType::U8;
    default: return Status::error(fmt::format("tensor dtype {} cannot be stored", c10::toString(t)));
  }
}

Result<torch::ScalarType> to_scalar_type(DType d) {
  switch (d) {
    case DType::F64: return torch::kFloat64;
    case DType::F32: return torch::kFloat32;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::I64: return torch::kInt64;
    case DType::I32: return torch::kInt32;
    case DType::U8: return torch::kUInt8;
    default: return Status::error(std::string("dtype ") + dtype_name(d) + " is not used in checkpoints");
  }
}

// Contiguous CPU copies keep the bytes alive while the writer streams them.
Status write_tensors(const std::string& path, const NamedTensors& tensors, const Metadata& meta) {
  SafetensorsWriter writer;
  std::vector<torch::Tensor> keep_alive;
  for (const auto& [name, t] : tensors) {
    auto dtype = to_dtype(t.scalar_type());
    if (!dtype) return dtype.status().with_context(name);
    auto cpu = t.detach().to(torch::kCPU).contiguous();
    keep_alive.push_back(cpu);
    writer.add(name, dtype.value(), cpu.sizes().vec(), cpu.data_ptr(), cpu.nbytes());
  }
  for (const auto& [k, v] : meta) writer.set_metadata(k, v);
  return writer.write(path);
}

Result<NamedTensors> read_tensors(const SafetensorsFile& file) {
  NamedTensors out;
  for (const auto& view : file.tensors()) {
    auto st = to_scalar_type(view.dtype);
    if (!st) return st.status().with_context(file.origin() + ": " + view.name);
    auto t = torch::empty(view.shape, torch::TensorOptions().dtype(st.value()));
    if (view.nbytes) std::memcpy(t.data_ptr(), view.data, view.nbytes);
    out.emplace_back(view.name, t);
  }
  return out;
}

Status check_version(const SafetensorsFile& file, const std::string& kind) {
  const auto& meta = file.metadata();
  auto v = meta.find("meridian.format_version");
  auto k = meta.find("meridian.kind");
  if (v == meta.end() || k == meta.end())
    return Status::error(file.origin() + ": not a Meridian checkpoint file (no meridian.format_version metadata)",
                         "pass the directory written by `meridian train` (runs/<name>/checkpoints/step_N)");
  if (v->second != std::to_string(kCheckpointFormatVersion))
    return Status::error(fmt::format("{}: checkpoint format version {}, this build reads version {}", file.origin(), v->second, kCheckpointFormatVersion),
                         "use the Meridian release that wrote it, or start a new run");
  if (k->second != kind)
    return Status::error(fmt::format("{}: holds '{}', expected '{}'", file.origin(), k->second, kind), "the checkpoint directory was assembled from wrong files");
  return Status::ok();
}

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

}  // namespace

std::string hf_config_json(const ModelConfig& m, int64_t bos_id, int64_t eos_id) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.dim;
  j["intermediate_size"] = m.ffn_dim;
  j["num_hidden_layers"] = m.n_layers;
  j["num_attention_heads"] = m.n_heads;
  j["num_key_value_heads"] = m.n_kv_heads;
  j["head_dim"] = m.head_dim();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_seq_len;
  j["rms_norm_eps"] = m.norm_eps;
  j["rope_theta"] = m.rope_theta;
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = false;
  j["bos_token_id"] = bos_id;
  j["eos_token_id"] = eos_id;
  j["torch_dtype"] = "float32";
  return j.dump(2) + "\n";
}

std::string tensors_hash(const NamedTensors& tensors) {
  Hasher128 h;
  for (const auto& [name, t] : tensors) {
    auto cpu = t.detach().to(torch::kCPU).contiguous();
    h.update(name);
    h.update(std::string(c10::toString(cpu.scalar_type())));
    for (auto s : cpu.sizes()) h.update(&s, sizeof(s));
    h.update(cpu.data_ptr(), cpu.nbytes());
  }
  return h.digest().hex();
}

Result<std::string> save_checkpoint(const std::string& run_dir, int64_t step, const ModelConfig& model_config,
                                    const NamedTensors& model, const NamedTensors& state, Metadata meta, int64_t keep) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path final_dir = root / step_dir_name(step);
  const fs::path tmp_dir = root / (step_dir_name(step) + ".tmp");
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return Status::error(tmp_dir.string() + ": cannot create (" + ec.message() + ")", "check that run.dir is writable");

  Metadata model_meta{{"format", "pt"},
                      {"meridian.format_version", std::to_string(kCheckpointFormatVersion)},
                      {"meridian.kind", "model"},
                      {"meridian.step", std::to_string(step)}};
  if (meta.count("meridian.model_hash")) model_meta["meridian.model_hash"] = meta["meridian.model_hash"];
  meta["meridian.format_version"] = std::to_string(kCheckpointFormatVersion);
  meta["meridian.kind"] = "train_state";
  meta["meridian.step"] = std::to_string(step);

  // Crash safety: everything is written under step_N.tmp; a SIGKILL at any fault point below
  // leaves the previous checkpoints and `latest` as they were, or the new one complete.
  MERIDIAN_FAULT_POINT("checkpoint.begin");
  MERIDIAN_RETURN_IF_ERROR(write_tensors((tmp_dir / "model.safetensors").string(), model, model_meta));
  MERIDIAN_FAULT_POINT("checkpoint.model_written");
  MERIDIAN_RETURN_IF_ERROR(write_tensors((tmp_dir / "state.safetensors").string(), state, meta));
  MERIDIAN_FAULT_POINT("checkpoint.state_written");
  const int64_t bos = meta.count("meridian.bos_id") ? std::stoll(meta["meridian.bos_id"]) : 0;
  const int64_t eos = meta.count("meridian.eos_id") ? std::stoll(meta["meridian.eos_id"]) : 0;
  MERIDIAN_RETURN_IF_ERROR(write_file_atomic((tmp_dir / "config.json").string(), hf_config_json(model_config, bos, eos)));
  MERIDIAN_RETURN_IF_ERROR(fsync_dir(tmp_dir.string()));
  MERIDIAN_FAULT_POINT("checkpoint.tmp_synced");

  // A checkpoint of the same step saved again (a resumed run stopped at once) is moved aside,
  // not deleted, until the new one is in place: a crash in between leaves step_N.old, which
  // resolve_checkpoint() finds.
  const fs::path old_dir = root / (step_dir_name(step) + ".old");
  fs::remove_all(old_dir, ec);
  if (fs::exists(final_dir, ec)) {
    fs::rename(final_dir, old_dir, ec);
    if (ec) return Status::error(final_dir.string() + ": cannot move aside (" + ec.message() + ")");
    MERIDIAN_FAULT_POINT("checkpoint.moved_aside");
  }
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return Status::error(final_dir.string() + ": rename failed (" + ec.message() + ")");
  MERIDIAN_RETURN_IF_ERROR(fsync_dir(root.string()));
  MERIDIAN_FAULT_POINT("checkpoint.renamed");
  MERIDIAN_RETURN_IF_ERROR(write_file_atomic((root / "latest").string(), step_dir_name(step) + "\n"));
  MERIDIAN_FAULT_POINT("checkpoint.latest_written");
  fs::remove_all(old_dir, ec);

  // Prune the oldest complete checkpoints beyond `keep`.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find(".tmp") == std::string::npos) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < names.size(); ++i) fs::remove_all(root / names[i], ec);
  return final_dir.string();
}

namespace {

bool complete_checkpoint(const fs::path& dir) {
  std::error_code ec;
  return fs::exists(dir / "state.safetensors", ec) && fs::exists(dir / "model.safetensors", ec) &&
         fs::exists(dir / "config.json", ec);
}

// The newest complete step_N (or step_N.old) directory under checkpoints/, or "" if none.
fs::path newest_complete(const fs::path& root) {
  std::error_code ec;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find(".tmp") == std::string::npos && complete_checkpoint(e.path()))
      dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs.empty() ? fs::path() : dirs.back();
}

}  // namespace

Result<std::string> resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  if (fs::exists(fs::path(path) / "state.safetensors", ec)) return path;
  const fs::path root = fs::path(path) / "checkpoints";
  const fs::path latest = root / "latest";
  if (fs::exists(latest, ec)) {
    auto text = read_file(latest.string());
    if (!text) return text.status();
    std::string name = text.value();
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const fs::path named = root / name;
    if (complete_checkpoint(named)) return named.string();
    // A save of the same step was cut between moving the old copy aside and renaming the new
    // one into place: the old copy is complete.
    const fs::path aside = root / (name + ".old");
    if (complete_checkpoint(aside)) return aside.string();
    return named.string();  // load_checkpoint names what is missing
  }
  // A crash between a run's first checkpoint and its first `latest` (written last): the
  // newest complete checkpoint is the one to continue from.
  if (const fs::path newest = newest_complete(root); !newest.empty()) return newest.string();
  if (!fs::exists(path, ec)) return Status::error(path + ": no such checkpoint or run directory", "pass runs/<name> or runs/<name>/checkpoints/step_N");
  return Status::error(path + ": neither a checkpoint (no state.safetensors) nor a run directory (no checkpoints/latest)",
                       "pass runs/<name> or runs/<name>/checkpoints/step_N");
}

Result<Checkpoint> load_checkpoint(const std::string& dir) {
  auto model_file = SafetensorsFile::open((fs::path(dir) / "model.safetensors").string());
  if (!model_file) return model_file.status();
  auto state_file = SafetensorsFile::open((fs::path(dir) / "state.safetensors").string());
  if (!state_file) return state_file.status();
  MERIDIAN_RETURN_IF_ERROR(check_version(model_file.value(), "model"));
  MERIDIAN_RETURN_IF_ERROR(check_version(state_file.value(), "train_state"));
  if (model_file->metadata().at("meridian.step") != state_file->metadata().at("meridian.step"))
    return Status::error(dir + ": model.safetensors and state.safetensors come from different steps", "restore the directory from one save");
  Checkpoint ck;
  auto model = read_tensors(model_file.value());
  if (!model) return model.status();
  auto state = read_tensors(state_file.value());
  if (!state) return state.status();
  ck.model = std::move(model.value());
  ck.state = std::move(state.value());
  ck.meta = state_file->metadata();
  return ck;
}

}  // namespace meridian::io
