// The run configuration: structs generated from options.h, loaded from TOML and `--set
// key=value` overrides, validated with every problem listed at once.
//
// Sources, later ones win: the defaults in options.h, an embedded preset or a TOML file, then
// `--set` overrides. Unknown keys and wrong types are errors (with a "did you mean" hint), never
// silently ignored. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "config/options.h"
#include "core/status.h"

namespace meridian {

#define MERIDIAN_DECLARE_FIELD(type, name, def, unit, help) type name = def;
struct ModelConfig { MERIDIAN_MODEL_OPTIONS(MERIDIAN_DECLARE_FIELD) int64_t head_dim() const { return dim / n_heads; } };
struct TrainConfig { MERIDIAN_TRAIN_OPTIONS(MERIDIAN_DECLARE_FIELD) };
struct DilocoConfig { MERIDIAN_DILOCO_OPTIONS(MERIDIAN_DECLARE_FIELD) };
struct DataConfig { MERIDIAN_DATA_OPTIONS(MERIDIAN_DECLARE_FIELD) };
struct RunConfig { MERIDIAN_RUN_OPTIONS(MERIDIAN_DECLARE_FIELD) };
#undef MERIDIAN_DECLARE_FIELD

struct Config {
  ModelConfig model;
  TrainConfig train;
  DilocoConfig diloco;
  DataConfig data;
  RunConfig run;
};

// One row of the option table, pointing into a Config.
struct OptionRef {
  std::string key;  // "train.lr"
  std::variant<int64_t*, double*, bool*, std::string*> value;
  std::string unit;
  std::string help;
};
std::vector<OptionRef> option_table(Config& config);

// Names of the presets compiled into the binary (configs/*.toml at build time).
std::vector<std::string> preset_names();
// The TOML text of a preset, or an error listing the known presets.
Result<std::string> preset_text(const std::string& name);

// Applies a TOML document on top of `config`; `origin` names it in errors. Every problem of the
// document is reported in one Status, one per line.
Status apply_toml(Config& config, const std::string& toml_text, const std::string& origin);
// Applies "key=value" overrides (from `--set`).
Status apply_overrides(Config& config, const std::vector<std::string>& assignments);
// Cross-field checks (heads divide, schedule fits, ...); all problems at once.
Status validate(const Config& config);

// One dataset of data.mixture: "name:weight:path" entries separated by commas.
struct MixtureEntry {
  std::string name;
  double weight = 0;
  std::string path;
};
// Parses data.mixture; empty text gives an empty list. Errors name the entry.
Result<std::vector<MixtureEntry>> parse_mixture(const std::string& text);

// Canonical TOML of every option: printed at start, saved in the run directory and checkpoints.
std::string to_toml(const Config& config);
// Hashes of the canonical text: of the whole config, and of the model section alone.
std::string config_hash(const Config& config);
std::string model_hash(const ModelConfig& model);

// Defaults, then the preset or file, then overrides, then validation. `source` is a preset name
// or a path to a .toml file.
Result<Config> load_config(const std::string& source, const std::vector<std::string>& overrides);

}  // namespace meridian
