// Config tests: every preset loads and validates, the printed config reads back to the same
// hash, and every kind of bad input gives a clear error naming the key and place.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "config/config.h"

using namespace meridian;

namespace {
Status apply(const std::string& toml) {
  Config c;
  return apply_toml(c, toml, "test.toml");
}
}  // namespace

TEST(Config, EveryPresetLoadsAndValidates) {
  const auto names = preset_names();
  for (const char* expected : {"tiny", "debug", "demo", "150m", "1b", "intellect-1-10b"})
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  for (const auto& name : names) {
    auto c = load_config(name, {});
    EXPECT_TRUE(c.is_ok()) << name << ": " << c.status().to_string();
  }
}

TEST(Config, Intellect1Shape) {
  auto c = load_config("intellect-1-10b", {});
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->model.n_layers, 42);
  EXPECT_EQ(c->model.dim, 4096);
  EXPECT_EQ(c->model.n_heads, 32);
  EXPECT_EQ(c->model.n_kv_heads, 8);
  EXPECT_EQ(c->model.ffn_dim, 14336);
  EXPECT_EQ(c->model.vocab_size, 128256);
  EXPECT_EQ(c->model.max_seq_len, 8192);
  EXPECT_DOUBLE_EQ(c->model.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c->train.z_loss_weight, 2e-4);
  auto mix = parse_mixture(c->data.mixture);
  ASSERT_TRUE(mix.is_ok()) << mix.status().to_string();
  ASSERT_EQ(mix->size(), 5u);
  const std::vector<std::pair<std::string, double>> expected = {
      {"fineweb-edu", 55}, {"fineweb", 10}, {"stack", 20}, {"dclm", 10}, {"open-web-math", 5}};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ((*mix)[i].name, expected[i].first);
    EXPECT_DOUBLE_EQ((*mix)[i].weight, expected[i].second);
  }
}

TEST(ConfigErrors, MalformedMixture) {
  auto c = load_config("tiny", {"data.mixture=a:1:x, a:2:y, b:-1:z, c:3"});
  ASSERT_FALSE(c.is_ok());
  const auto& m = c.status().message();
  EXPECT_NE(m.find("'a' is listed twice"), std::string::npos) << m;
  EXPECT_NE(m.find("weight '-1' of 'b'"), std::string::npos) << m;
  EXPECT_NE(m.find("'c:3' is not name:weight:path"), std::string::npos) << m;
}

TEST(Config, PrintedConfigReadsBackIdentically) {
  auto c = load_config("intellect-1-10b", {"train.lr=1.234e-5", "run.dir=some dir/with \"quotes\""});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  Config back;
  ASSERT_TRUE(apply_toml(back, to_toml(c.value()), "printed").is_ok());
  EXPECT_EQ(to_toml(back), to_toml(c.value()));
  EXPECT_EQ(config_hash(back), config_hash(c.value()));
  EXPECT_EQ(back.run.dir, "some dir/with \"quotes\"");
}

TEST(Config, OverridesApplyWithTypes) {
  auto c = load_config("tiny", {"train.lr=0.5", "train.steps=7", "train.bf16=true", "model.name=x"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_DOUBLE_EQ(c->train.lr, 0.5);
  EXPECT_EQ(c->train.steps, 7);
  EXPECT_TRUE(c->train.bf16);
  EXPECT_EQ(c->model.name, "x");
}

TEST(Config, ModelHashIgnoresTrainingKeysButNotShape) {
  auto a = load_config("tiny", {});
  auto b = load_config("tiny", {"train.lr=0.1"});
  auto d = load_config("tiny", {"model.dim=128"});
  ASSERT_TRUE(a.is_ok() && b.is_ok() && d.is_ok());
  EXPECT_EQ(model_hash(a->model), model_hash(b->model));
  EXPECT_NE(config_hash(a.value()), config_hash(b.value()));
  EXPECT_NE(model_hash(a->model), model_hash(d->model));
}

TEST(ConfigErrors, MalformedTomlNamesFileAndLine) {
  auto s = apply("[train]\nlr = 0.1\nsteps = = 3\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("test.toml:3"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("malformed TOML"), std::string::npos) << s.message();
}

TEST(ConfigErrors, UnknownKeySuggestsTheClosest) {
  auto s = apply("[train]\nlrr = 0.1\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("unknown key 'train.lrr'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("did you mean 'train.lr'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("test.toml:2"), std::string::npos) << s.message();
}

TEST(ConfigErrors, WrongTypeNamesExpectedAndActual) {
  auto s = apply("[train]\nsteps = \"many\"\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("'train.steps' must be an integer, got string"), std::string::npos) << s.message();
  EXPECT_FALSE(apply("[train]\nlr = 1\n").is_ok() == false) << "an integer is a valid float";
  EXPECT_FALSE(apply("[train]\nbf16 = 1\n").is_ok());
}

TEST(ConfigErrors, AllProblemsListedAtOnce) {
  auto s = apply("[train]\nlrr = 1.0\nsteps = true\n[modle]\ndim = 3\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("train.lrr"), std::string::npos);
  EXPECT_NE(s.message().find("train.steps"), std::string::npos);
  EXPECT_NE(s.message().find("modle.dim"), std::string::npos);
  EXPECT_EQ(std::count(s.message().begin(), s.message().end(), '\n'), 2) << s.message();
}

TEST(ConfigErrors, ValidationListsEveryInconsistency) {
  auto c = load_config("tiny", {"model.n_kv_heads=3", "train.seq_len=4096", "train.decay=step"});
  ASSERT_FALSE(c.is_ok());
  const auto& m = c.status().message();
  EXPECT_NE(m.find("n_kv_heads (3) must divide model.n_heads (4)"), std::string::npos) << m;
  EXPECT_NE(m.find("train.seq_len (4096)"), std::string::npos) << m;
  EXPECT_NE(m.find("train.decay must be linear, cosine or sqrt"), std::string::npos) << m;
}

TEST(ConfigErrors, BadOverrides) {
  Config c;
  auto s = apply_overrides(c, {"train.steps=ten", "nokey", "train.stepz=3", "train.lr=1e-3x"});
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("'ten' is not an integer"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("expected key=value"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("did you mean 'train.steps'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'1e-3x' is not a number"), std::string::npos) << s.message();
}

TEST(ConfigErrors, MissingFileAndUnknownPreset) {
  auto missing = load_config("/nonexistent/run.toml", {});
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/run.toml"), std::string::npos);
  auto preset = load_config("tinyy", {});
  ASSERT_FALSE(preset.is_ok());
  EXPECT_NE(preset.status().hint().find("tiny"), std::string::npos);
}
