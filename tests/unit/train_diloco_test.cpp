// DiLoCo outer-loop tests: the outer step against libtorch's own SGD with Nesterov momentum,
// the pseudo-gradient, the degenerate case (outer lr 1, no momentum == plain training), and
// bit-exact resume in the middle of a round.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "config/config.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "support/test_util.h"
#include "train/diloco.h"
#include "train/trainer.h"

using namespace meridian;
using meridian::test_support::TempDir;

namespace {

void write_text_shard(const std::string& path, int documents) {
  data::ByteTokenizer tok;
  data::ShardWriter writer(path, tok.vocab_size());
  for (int d = 0; d < documents; ++d) {
    std::string text = "round " + std::to_string(d) + ": nodes average their pseudo-gradients and step outside.\n";
    std::vector<uint32_t> ids{tok.bos_id()};
    for (auto id : tok.encode(text)) ids.push_back(id);
    writer.append(ids.data(), ids.size());
  }
  ASSERT_TRUE(writer.finish().is_ok());
}

Config diloco_config(const TempDir& dir, int64_t steps, int64_t inner_steps) {
  auto loaded = load_config("tiny", {});
  EXPECT_TRUE(loaded.is_ok());
  Config c = loaded.value();
  c.train.steps = steps;
  c.train.threads = 1;
  c.diloco.enabled = true;
  c.diloco.inner_steps = inner_steps;
  c.data.train_path = dir.file("train.tok");
  c.data.val_path = "";
  c.run.dir = dir.file("run");
  c.run.peak_tflops = 1.0;
  return c;
}

// Trains `with` (diloco.enabled) and the same config without the outer loop, quietly and
// without run directories; returns both trainers after their runs.
std::pair<std::unique_ptr<train::Trainer>, std::unique_ptr<train::Trainer>> run_with_and_without(const Config& with) {
  train::TrainerOptions quiet;
  quiet.out = nullptr;
  quiet.write_run_dir = false;
  Config without = with;
  without.diloco.enabled = false;
  auto a = train::Trainer::create(with, quiet);
  auto b = train::Trainer::create(without, quiet);
  EXPECT_TRUE(a.is_ok() && b.is_ok());
  if (!a.is_ok() || !b.is_ok()) return {};
  EXPECT_TRUE(a.value()->run().is_ok());
  EXPECT_TRUE(b.value()->run().is_ok());
  return {std::move(a.value()), std::move(b.value())};
}

}  // namespace

TEST(Diloco, OuterStepMatchesLibtorchNesterovSgd) {
  torch::manual_seed(21);
  auto p = torch::randn({6, 3});
  auto q = torch::randn({5});
  train::OuterOptimizer outer({{"p", p}, {"q", q}}, {0.7, 0.9});
  // Reference: theta as one parameter, updated by torch::optim::SGD with grad = delta.
  auto theta_ref = torch::cat({p.reshape({-1}), q}).clone().requires_grad_(true);
  torch::optim::SGD sgd({theta_ref}, torch::optim::SGDOptions(0.7).momentum(0.9).nesterov(true));
  for (int round = 0; round < 4; ++round) {
    {
      torch::NoGradGuard g;  // "inner steps": move the parameters somewhere
      p.add_(torch::randn_like(p) * 0.1);
      q.add_(torch::randn_like(q) * 0.1);
    }
    auto delta = outer.pseudo_gradient().clone();
    EXPECT_TRUE(torch::allclose(delta, theta_ref.detach() - torch::cat({p.reshape({-1}), q}), 1e-6, 1e-7));
    sgd.zero_grad();
    theta_ref.mutable_grad() = delta.clone();
    sgd.step();
    outer.step(delta);
    // After the step the model holds theta.
    EXPECT_TRUE(torch::allclose(torch::cat({p.reshape({-1}), q}), theta_ref.detach(), 1e-6, 1e-6)) << "round " << round;
  }
  EXPECT_EQ(outer.rounds(), 4);
}

TEST(Diloco, UnitOuterLrWithoutMomentumIsPlainTraining) {
  TempDir dir;
  write_text_shard(dir.file("train.tok"), 200);
  Config with = diloco_config(dir, 12, 4);
  with.diloco.outer_lr = 1.0;
  with.diloco.outer_momentum = 0.0;
  auto [a, b] = run_with_and_without(with);
  ASSERT_TRUE(a && b);
  for (auto& item : a->model()->named_parameters()) {
    auto other = b->model()->named_parameters()[item.key()];
    EXPECT_TRUE(torch::allclose(item.value(), other, 1e-5, 1e-6)) << item.key();
  }
}

TEST(Diloco, OuterStepsChangeTheTrajectory) {
  TempDir dir;
  write_text_shard(dir.file("train.tok"), 200);
  auto [a, b] = run_with_and_without(diloco_config(dir, 8, 4));
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->state_hash(), b->state_hash());
}

TEST(Diloco, ResumeMidRoundIsBitExact) {
  TempDir dir;
  write_text_shard(dir.file("train.tok"), 300);
  train::TrainerOptions quiet;
  quiet.out = nullptr;
  Config straight = diloco_config(dir, 20, 4);
  straight.run.dir = dir.file("a");
  auto a = train::Trainer::create(straight, quiet);
  ASSERT_TRUE(a.is_ok());
  ASSERT_TRUE(a.value()->run().is_ok());
  const std::string expected = a.value()->state_hash();

  Config first = diloco_config(dir, 20, 4);
  first.run.dir = dir.file("b");
  first.train.stop_at_step = 10;  // two rounds and half of the third
  auto b1 = train::Trainer::create(first, quiet);
  ASSERT_TRUE(b1.is_ok());
  auto s1 = b1.value()->run();
  ASSERT_TRUE(s1.is_ok()) << s1.status().to_string();
  b1.value().reset();
  Config second = first;
  second.train.stop_at_step = 0;
  quiet.resume = s1->checkpoint;
  auto b2 = train::Trainer::create(second, quiet);
  ASSERT_TRUE(b2.is_ok()) << b2.status().to_string();
  ASSERT_TRUE(b2.value()->run().is_ok());
  EXPECT_EQ(b2.value()->state_hash(), expected);

  // A checkpoint saved without DiLoCo cannot silently resume with it.
  Config plain = first;
  plain.diloco.enabled = false;
  plain.run.dir = dir.file("c");
  quiet.resume = "";
  auto c = train::Trainer::create(plain, quiet);
  ASSERT_TRUE(c.is_ok());
  auto sc = c.value()->run();
  ASSERT_TRUE(sc.is_ok());
  Config resumed_with = first;
  resumed_with.run.dir = dir.file("c");
  quiet.resume = sc->checkpoint;
  auto bad = train::Trainer::create(resumed_with, quiet);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("saved without DiLoCo"), std::string::npos) << bad.status().message();
}
