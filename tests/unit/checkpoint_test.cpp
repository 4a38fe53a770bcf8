// Checkpoint tests: round trip, Hugging Face config, atomic layout, and a clear error for every
// kind of damage (truncated, corrupt header, wrong version, missing file, mixed steps).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "io/checkpoint.h"

using namespace meridian;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir;
  ModelConfig model;
  io::NamedTensors weights, state;
  Fixture() {
    dir = fs::temp_directory_path() / ("meridian_ckpt_" + std::to_string(::getpid()) + "_" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    weights = {{"a.weight", torch::randn({3, 4})}, {"b.weight", torch::randn({5})}};
    state = {{"exp_avg.a.weight", torch::randn({3, 4})}, {"rng", torch::randint(255, {16}, torch::kUInt8)}};
  }
  ~Fixture() { fs::remove_all(dir); }
  std::string save(int64_t step, int64_t keep = 3) {
    auto r = io::save_checkpoint(dir.string(), step, model, weights, state, {{"meridian.model_hash", "h"}}, keep);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.value();
  }
};

void truncate_file(const fs::path& p, size_t keep_bytes) { fs::resize_file(p, keep_bytes); }

}  // namespace

TEST(Checkpoint, RoundTripAndLayout) {
  Fixture f;
  const std::string ck = f.save(7);
  EXPECT_EQ(fs::path(ck).filename(), "step_00000007");
  EXPECT_TRUE(fs::exists(fs::path(ck) / "config.json"));
  EXPECT_FALSE(fs::exists(fs::path(ck + ".tmp")));
  auto resolved = io::resolve_checkpoint(f.dir.string());
  ASSERT_TRUE(resolved.is_ok());
  EXPECT_EQ(resolved.value(), ck);
  auto loaded = io::load_checkpoint(ck);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(io::tensors_hash(loaded->model), io::tensors_hash(f.weights));
  EXPECT_EQ(io::tensors_hash(loaded->state), io::tensors_hash(f.state));
  EXPECT_EQ(loaded->meta.at("meridian.step"), "7");
  auto hf = nlohmann::json::parse(read_file((fs::path(ck) / "config.json").string()).value());
  EXPECT_EQ(hf["model_type"], "llama");
  EXPECT_EQ(hf["num_key_value_heads"], f.model.n_kv_heads);
}

TEST(Checkpoint, KeepsOnlyTheNewest) {
  Fixture f;
  for (int64_t s : {1, 2, 3, 4}) f.save(s, 2);
  EXPECT_FALSE(fs::exists(f.dir / "checkpoints" / "step_00000002"));
  EXPECT_TRUE(fs::exists(f.dir / "checkpoints" / "step_00000003"));
  EXPECT_TRUE(fs::exists(f.dir / "checkpoints" / "step_00000004"));
  EXPECT_EQ(io::resolve_checkpoint(f.dir.string()).value(), (f.dir / "checkpoints" / "step_00000004").string());
}

TEST(CheckpointErrors, TruncatedFileNamesFile) {
  Fixture f;
  const fs::path ck = f.save(1);
  truncate_file(ck / "model.safetensors", fs::file_size(ck / "model.safetensors") - 10);
  auto r = io::load_checkpoint(ck.string());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("model.safetensors"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().message();
}

TEST(CheckpointErrors, CorruptHeaderNamesFile) {
  Fixture f;
  const fs::path ck = f.save(1);
  {
    std::fstream io((ck / "state.safetensors").string(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(9);
    io.write("\x01\x02\x03", 3);  // inside the JSON header
  }
  auto r = io::load_checkpoint(ck.string());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("state.safetensors"), std::string::npos) << r.status().message();
}

TEST(CheckpointErrors, HeaderLengthBeyondFile) {
  Fixture f;
  const fs::path ck = f.save(1);
  {
    std::fstream io((ck / "model.safetensors").string(), std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t absurd = 1ull << 40;
    io.write(reinterpret_cast<const char*>(&absurd), 8);
  }
  auto r = io::load_checkpoint(ck.string());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("model.safetensors"), std::string::npos) << r.status().message();
}

TEST(CheckpointErrors, MissingFileAndWrongDirectory) {
  Fixture f;
  const fs::path ck = f.save(1);
  fs::remove(ck / "state.safetensors");
  auto r = io::load_checkpoint(ck.string());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("state.safetensors"), std::string::npos);
  auto none = io::resolve_checkpoint((f.dir / "nothing-here").string());
  ASSERT_FALSE(none.is_ok());
  EXPECT_NE(none.status().message().find("nothing-here"), std::string::npos);
}

TEST(CheckpointErrors, MixedStepsRefused) {
  Fixture f;
  const fs::path a = f.save(1);
  const fs::path b = f.save(2);
  fs::copy_file(a / "model.safetensors", b / "model.safetensors", fs::copy_options::overwrite_existing);
  auto r = io::load_checkpoint(b.string());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("different steps"), std::string::npos) << r.status().message();
}
