// Checkpoints on disk: a directory per step, written atomically.
//
//   <run>/checkpoints/step_00000100/
//     model.safetensors   the weights under Hugging Face Llama names (fp32), metadata format=pt
//     config.json         a Hugging Face LlamaConfig, so transformers loads the directory as is
//     state.safetensors   everything else a bit-exact resume needs: optimizer moments, RNG
//                         state, counters and cursors (metadata), the resolved config
//   <run>/checkpoints/latest   the name of the newest complete checkpoint
//
// Atomicity: files are written into "step_N.tmp/", each fsynced, the directory renamed to
// "step_N" and the parent fsynced; `latest` is replaced atomically last. A crash at any moment
// leaves the previous checkpoint and `latest` intact.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/status.h"

namespace meridian::io {

inline constexpr int kCheckpointFormatVersion = 1;

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
using Metadata = std::map<std::string, std::string>;

struct Checkpoint {
  NamedTensors model;   // in file order (sorted by name)
  NamedTensors state;
  Metadata meta;        // state.safetensors' metadata
};

// Writes <run_dir>/checkpoints/step_<step>/ and updates `latest`; keeps the newest `keep`.
Result<std::string> save_checkpoint(const std::string& run_dir, int64_t step, const ModelConfig& model_config,
                                    const NamedTensors& model, const NamedTensors& state, Metadata meta, int64_t keep);

// `path` is a checkpoint directory or a run directory (then its `latest` is used).
Result<std::string> resolve_checkpoint(const std::string& path);
// Loads and validates both files (format version, kinds, every tensor's bounds).
Result<Checkpoint> load_checkpoint(const std::string& checkpoint_dir);

// A Hugging Face LlamaConfig for the model.
std::string hf_config_json(const ModelConfig& model, int64_t bos_id, int64_t eos_id);

// XXH3-128 over every tensor's name, dtype, shape and bytes, in the given order.
std::string tensors_hash(const NamedTensors& tensors);

}  // namespace meridian::io
