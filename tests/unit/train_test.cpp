// Trainer tests: the WSD schedule, AdamW against libtorch's own torch::optim::AdamW, gradient
// clipping, overfitting one batch, and bit-exact resume (20 steps straight == 10 + save +
// resume + 10, compared by the hash of every parameter, optimizer tensor and counter).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <string>

#include "data/shard.h"
#include "support/test_util.h"
#include "data/tokenizer.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "train/autocast.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/trainer.h"

using namespace meridian;
namespace fs = std::filesystem;

namespace {

using meridian::test_support::TempDir;

// A small corpus of English-like documents, written as a byte-level shard.
void write_corpus(const fs::path& file, int documents) {
  data::ByteTokenizer tok;
  data::ShardWriter writer(file.string(), tok.vocab_size());
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home", "today"};
  uint64_t x = 42;
  for (int d = 0; d < documents; ++d) {
    std::string text;
    const int n = 5 + d % 11;
    for (int w = 0; w < n; ++w) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      text += std::string(words[(x >> 33) % 14]) + (w + 1 < n ? " " : ".\n");
    }
    std::vector<uint32_t> ids{tok.bos_id()};
    for (auto id : tok.encode(text)) ids.push_back(id);
    writer.append(ids.data(), ids.size());
  }
  ASSERT_TRUE(writer.finish().is_ok());
}

Config tiny_config(const fs::path& dir, int64_t steps) {
  auto config = load_config("tiny", {});
  EXPECT_TRUE(config.is_ok()) << config.status().to_string();
  Config c = config.value();
  c.train.steps = steps;
  c.train.threads = 1;
  c.train.eval_batches = 1;
  c.data.train_path = (dir / "train.tok").string();
  c.data.val_path = (dir / "val.tok").string();
  c.run.dir = (dir / "run").string();
  c.run.peak_tflops = 1.0;  // skip the matmul measurement
  return c;
}

}  // namespace

TEST(Schedule, WarmupStableDecayShapes) {
  TrainConfig c;
  c.steps = 100;
  c.warmup_steps = 10;
  c.decay_fraction = 0.2;
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.decay = "linear";
  EXPECT_DOUBLE_EQ(train::wsd_lr(c, 1), 0.1);
  EXPECT_DOUBLE_EQ(train::wsd_lr(c, 5), 0.5);
  EXPECT_DOUBLE_EQ(train::wsd_lr(c, 10), 1.0);
  EXPECT_DOUBLE_EQ(train::wsd_lr(c, 50), 1.0);
  EXPECT_DOUBLE_EQ(train::wsd_lr(c, 80), 1.0);
  EXPECT_NEAR(train::wsd_lr(c, 90), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_NEAR(train::wsd_lr(c, 100), 0.1, 1e-12);
  c.decay = "cosine";
  EXPECT_NEAR(train::wsd_lr(c, 90), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_NEAR(train::wsd_lr(c, 100), 0.1, 1e-12);
  c.decay = "sqrt";
  EXPECT_NEAR(train::wsd_lr(c, 85), 0.1 + 0.9 * (1 - std::sqrt(0.25)), 1e-12);
  EXPECT_NEAR(train::wsd_lr(c, 100), 0.1, 1e-12);
}

TEST(Optimizer, AdamWMatchesLibtorchAdamW) {
  torch::manual_seed(11);
  auto p_ours = torch::randn({7, 5}, torch::kFloat64).requires_grad_(true);
  auto p_ref = p_ours.detach().clone().requires_grad_(true);
  train::AdamW ours({{"p", p_ours}}, {0.9, 0.95, 1e-8, 0.1});
  torch::optim::AdamW ref({p_ref}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 6; ++step) {
    auto target = torch::randn({7, 5}, torch::kFloat64);
    ours.zero_grad();
    ref.zero_grad();
    (p_ours - target).pow(2).sum().backward();
    (p_ref - target).pow(2).sum().backward();
    ours.step(0.01);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(p_ours, p_ref, 1e-12, 1e-14)) << (p_ours - p_ref).abs().max().item<double>();
  EXPECT_EQ(ours.step_count(), 6);
}

TEST(Optimizer, ClipGradNormScalesToMaxNorm) {
  auto a = torch::zeros({2}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(train::clip_grad_norm({a, b}, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-6);
  EXPECT_NEAR(train::clip_grad_norm({a, b}, 10.0), 1.0, 1e-6);  // below the bound: unchanged
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-6);
}

TEST(Trainer, OverfitsOneBatch) {
  torch::manual_seed(3);
  torch::set_num_threads(1);
  auto config = load_config("tiny", {});
  ASSERT_TRUE(config.is_ok());
  model::Llama m(config->model);
  train::NamedTensors named;
  for (auto& item : m->named_parameters()) named.emplace_back(item.key(), item.value());
  train::AdamW opt(named, {0.9, 0.95, 1e-8, 0.0});
  data::ByteTokenizer tok;
  auto ids = tok.encode("Meridian trains language models across far-apart machines. It keeps going when nodes die!");
  auto seq = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).narrow(0, 0, 65);
  auto inputs = torch::stack({seq.narrow(0, 0, 64), seq.narrow(0, 1, 64).flip(0)});
  auto targets = torch::stack({seq.narrow(0, 1, 64), seq.narrow(0, 0, 64).flip(0)});
  double first = 0, last = 0;
  for (int step = 0; step < 800; ++step) {
    opt.zero_grad();
    auto loss = model::lm_loss(m(inputs), targets, 2e-4);
    loss.total.backward();
    opt.step(1e-2);
    if (step == 0) first = loss.ce.item<double>();
    last = loss.ce.item<double>();
  }
  EXPECT_GT(first, 5.0);  // ~ln(259) at init
  EXPECT_LT(last, 0.05) << "the tiny model did not memorise one batch";
}

TEST(Trainer, ResumeIsBitExact) {
  TempDir dir;
  write_corpus(dir.fs_path() / "train.tok", 400);
  write_corpus(dir.fs_path() / "val.tok", 20);

  // 20 steps straight.
  Config straight = tiny_config(dir.fs_path() / "a", 20);
  fs::create_directories(dir.fs_path() / "a");
  fs::copy(dir.fs_path() / "train.tok", dir.fs_path() / "a" / "train.tok");
  fs::copy(dir.fs_path() / "val.tok", dir.fs_path() / "a" / "val.tok");
  train::TrainerOptions quiet;
  quiet.out = nullptr;
  auto a = train::Trainer::create(straight, quiet);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  auto sa = a.value()->run();
  ASSERT_TRUE(sa.is_ok()) << sa.status().to_string();
  EXPECT_EQ(sa->last_step, 20);
  const std::string hash_straight = a.value()->state_hash();
  a.value().reset();

  // 10 steps, stop, resume in a new trainer, 10 more.
  Config first_half = tiny_config(dir.fs_path() / "a", 20);
  first_half.run.dir = (dir.fs_path() / "b").string();
  first_half.train.stop_at_step = 10;
  auto b1 = train::Trainer::create(first_half, quiet);
  ASSERT_TRUE(b1.is_ok()) << b1.status().to_string();
  auto sb1 = b1.value()->run();
  ASSERT_TRUE(sb1.is_ok()) << sb1.status().to_string();
  EXPECT_EQ(sb1->last_step, 10);
  const std::string hash_at_10 = b1.value()->state_hash();
  b1.value().reset();
  torch::manual_seed(999);  // disturb the global RNG: the checkpoint must restore it

  Config second_half = first_half;
  second_half.train.stop_at_step = 0;
  quiet.resume = sb1->checkpoint;
  auto b2 = train::Trainer::create(second_half, quiet);
  ASSERT_TRUE(b2.is_ok()) << b2.status().to_string();
  EXPECT_EQ(b2.value()->step(), 10);
  EXPECT_EQ(b2.value()->state_hash(), hash_at_10) << "loading did not restore the saved state exactly";
  auto sb2 = b2.value()->run();
  ASSERT_TRUE(sb2.is_ok()) << sb2.status().to_string();
  EXPECT_EQ(sb2->last_step, 20);
  EXPECT_EQ(b2.value()->state_hash(), hash_straight) << "10 + resume + 10 differs from 20 straight";

  // The final checkpoints on disk agree too, tensor for tensor.
  auto ck_a = io::load_checkpoint(sa->checkpoint);
  auto ck_b = io::load_checkpoint(sb2->checkpoint);
  ASSERT_TRUE(ck_a.is_ok() && ck_b.is_ok());
  EXPECT_EQ(io::tensors_hash(ck_a->model), io::tensors_hash(ck_b->model));
  EXPECT_EQ(io::tensors_hash(ck_a->state), io::tensors_hash(ck_b->state));
}

TEST(Trainer, LossFallsOnText) {
  TempDir dir;
  write_corpus(dir.fs_path() / "train.tok", 400);
  write_corpus(dir.fs_path() / "val.tok", 20);
  Config c = tiny_config(dir.fs_path(), 40);
  c.train.warmup_steps = 4;
  train::TrainerOptions quiet;
  quiet.out = nullptr;
  auto t = train::Trainer::create(c, quiet);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  auto s = t.value()->run();
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  EXPECT_LT(s->final_loss, s->first_loss - 2.0);
  ASSERT_TRUE(s->val_loss.has_value());
  EXPECT_LT(*s->val_loss, s->unigram_entropy) << "the model should beat the unigram entropy of this repetitive text";
  // Metrics: one JSON line per logged step plus the evaluation.
  std::ifstream metrics(fs::path(c.run.dir) / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 40 + 1);
}

TEST(Trainer, ResumeRefusesAnotherModelShape) {
  TempDir dir;
  write_corpus(dir.fs_path() / "train.tok", 100);
  write_corpus(dir.fs_path() / "val.tok", 10);
  Config c = tiny_config(dir.fs_path(), 2);
  train::TrainerOptions quiet;
  quiet.out = nullptr;
  auto t = train::Trainer::create(c, quiet);
  ASSERT_TRUE(t.is_ok());
  auto s = t.value()->run();
  ASSERT_TRUE(s.is_ok());
  Config other = c;
  other.model.dim = 32;
  quiet.resume = s->checkpoint;
  auto bad = train::Trainer::create(other, quiet);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("another model shape"), std::string::npos) << bad.status().message();
}

TEST(Trainer, Bf16AutocastEngagesAndStaysClose) {
  torch::manual_seed(12);
  auto config = load_config("tiny", {});
  ASSERT_TRUE(config.is_ok());
  model::Llama m(config->model);
  auto tokens = torch::randint(config->model.vocab_size, {2, 32}, torch::kInt64);
  torch::NoGradGuard no_grad;
  auto fp32 = m(tokens);
  torch::Tensor bf16;
  {
    train::AutocastGuard autocast(true, /*cuda=*/false);
    bf16 = m(tokens);
  }
  auto after = m(tokens);  // the guard must switch autocast off again
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat);
  EXPECT_FALSE(torch::equal(fp32, bf16)) << "autocast did not change the computation";
  EXPECT_LT((fp32 - bf16).abs().max().item<double>(), 0.05);
  EXPECT_TRUE(torch::equal(fp32, after));
}
