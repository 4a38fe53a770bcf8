// Model tests: autograd gradients of every component against central finite differences in
// float64, causality, GQA against plain multi-head attention, RoPE against the rotation
// formula, and the loss against a direct computation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include "model/llama.h"

using namespace meridian;
using namespace meridian::model;

namespace {

ModelConfig small_config(int64_t n_heads = 4, int64_t n_kv_heads = 2) {
  ModelConfig c;
  c.vocab_size = 23;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.ffn_dim = 24;
  c.max_seq_len = 16;
  c.rope_theta = 10000.0;
  c.init_std = 0.3;  // large enough that attention is far from uniform
  return c;
}

// Compares autograd's gradient of f with respect to each input against central differences at
// `samples` random entries per input. f must be a float64 scalar.
void expect_gradients_match(const std::function<torch::Tensor()>& f, const std::vector<torch::Tensor>& inputs,
                            const std::string& what, int samples = 8) {
  for (const auto& x : inputs) {
    ASSERT_EQ(x.scalar_type(), torch::kFloat64) << what;
    if (x.grad().defined()) x.mutable_grad().zero_();
  }
  f().backward();
  const double h = 1e-6;
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < inputs.size(); ++k) {
    auto flat = inputs[k].view({-1});
    auto grad = inputs[k].grad().reshape({-1});
    ASSERT_TRUE(grad.defined()) << what << " input " << k << " got no gradient";
    for (int s = 0; s < samples; ++s) {
      const int64_t i = (s * 7919 + 13 * static_cast<int64_t>(k)) % flat.numel();
      const double saved = flat[i].item<double>();
      flat[i] = saved + h;
      const double up = f().item<double>();
      flat[i] = saved - h;
      const double down = f().item<double>();
      flat[i] = saved;
      const double numeric = (up - down) / (2 * h);
      const double analytic = grad[i].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
          << what << ": input " << k << " entry " << i;
    }
  }
}

torch::Tensor rand64(std::vector<int64_t> shape) {
  return torch::randn(shape, torch::kFloat64).requires_grad_(true);
}

}  // namespace

TEST(ModelGradcheck, RMSNorm) {
  torch::manual_seed(1);
  RMSNorm norm(16, 1e-5);
  norm->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    norm->weight.uniform_(0.5, 1.5);
  }
  auto x = rand64({3, 5, 16});
  auto r = torch::randn({3, 5, 16}, torch::kFloat64);
  expect_gradients_match([&] { return (norm(x) * r).sum(); }, {x, norm->weight}, "RMSNorm");
}

TEST(ModelGradcheck, Rope) {
  torch::manual_seed(2);
  auto rope = make_rope_tables(16, 8, 10000.0);
  auto x = rand64({2, 3, 7, 8});
  auto r = torch::randn({2, 3, 7, 8}, torch::kFloat64);
  expect_gradients_match([&] { return (apply_rope(x, rope) * r).sum(); }, {x}, "RoPE");
}

TEST(ModelGradcheck, AttentionWithGqa) {
  torch::manual_seed(3);
  auto c = small_config(4, 2);
  Attention attn(c);
  attn->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    for (auto& p : attn->parameters()) p.normal_(0, 0.3);
  }
  auto rope = make_rope_tables(c.max_seq_len, c.head_dim(), c.rope_theta);
  auto x = rand64({2, 6, c.dim});
  auto r = torch::randn({2, 6, c.dim}, torch::kFloat64);
  expect_gradients_match([&] { return (attn(x, rope) * r).sum(); },
                         {x, attn->q_proj->weight, attn->k_proj->weight, attn->v_proj->weight, attn->o_proj->weight}, "attention");
}

TEST(ModelGradcheck, SwiGLU) {
  torch::manual_seed(4);
  Mlp mlp(16, 24);
  mlp->to(torch::kFloat64);
  auto x = rand64({2, 5, 16});
  auto r = torch::randn({2, 5, 16}, torch::kFloat64);
  expect_gradients_match([&] { return (mlp(x) * r).sum(); },
                         {x, mlp->gate_proj->weight, mlp->up_proj->weight, mlp->down_proj->weight}, "SwiGLU");
}

TEST(ModelGradcheck, FullModelLossWithZLoss) {
  torch::manual_seed(5);
  auto c = small_config(4, 2);
  Llama m(c);
  m->to(torch::kFloat64);
  auto tokens = torch::randint(c.vocab_size, {2, 9}, torch::kInt64);
  auto targets = torch::randint(c.vocab_size, {2, 9}, torch::kInt64);
  std::vector<torch::Tensor> checked;
  for (auto& item : m->named_parameters())
    if (item.key().find("layers.1") != std::string::npos || item.key().find("embed") != std::string::npos ||
        item.key().find("lm_head") != std::string::npos || item.key() == "model.norm.weight")
      checked.push_back(item.value());
  ASSERT_GE(checked.size(), 10u);
  // A large z-loss weight so an error in the z-loss gradient cannot hide below the tolerance.
  expect_gradients_match([&] { return lm_loss(m(tokens), targets, 0.1).total; }, checked, "model loss", 4);
}

TEST(Model, Causality) {
  torch::manual_seed(6);
  auto c = small_config();
  Llama m(c);
  m->to(torch::kFloat64);
  torch::NoGradGuard g;
  auto tokens = torch::randint(c.vocab_size, {1, 12}, torch::kInt64);
  auto base = m(tokens);
  for (int64_t t : {0, 3, 7, 11}) {
    auto changed = tokens.clone();
    changed[0][t] = (changed[0][t].item<int64_t>() + 1) % c.vocab_size;
    auto out = m(changed);
    if (t > 0) {
      EXPECT_TRUE(torch::equal(out.narrow(1, 0, t), base.narrow(1, 0, t))) << "token " << t << " leaked backwards";
    }
    EXPECT_FALSE(torch::allclose(out.narrow(1, t, 1), base.narrow(1, t, 1))) << "token " << t << " did not affect its own position";
  }
}

namespace {
// Plain multi-head causal attention written from the formula, one head at a time.
torch::Tensor reference_mha(const torch::Tensor& x, const torch::Tensor& wq, const torch::Tensor& wk, const torch::Tensor& wv,
                            const torch::Tensor& wo, int64_t n_heads, const RopeTables& rope) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), D = C / n_heads;
  auto q = torch::matmul(x, wq.t()), k = torch::matmul(x, wk.t()), v = torch::matmul(x, wv.t());
  std::vector<torch::Tensor> heads;
  for (int64_t h = 0; h < n_heads; ++h) {
    auto qh = apply_rope(q.narrow(2, h * D, D).unsqueeze(1), rope).squeeze(1);  // [B, T, D]
    auto kh = apply_rope(k.narrow(2, h * D, D).unsqueeze(1), rope).squeeze(1);
    auto vh = v.narrow(2, h * D, D);
    auto scores = torch::matmul(qh, kh.transpose(1, 2)) / std::sqrt(static_cast<double>(D));  // [B, T, T]
    auto mask = torch::ones({T, T}, torch::kBool).triu(1);
    auto probs = torch::softmax(scores.masked_fill(mask, -1e300), -1);
    heads.push_back(torch::matmul(probs, vh));
  }
  (void)B;
  return torch::matmul(torch::cat(heads, 2), wo.t());
}
}  // namespace

TEST(Model, GqaWithAllKvHeadsEqualsMultiHeadAttention) {
  torch::manual_seed(7);
  auto c = small_config(4, 4);
  Attention attn(c);
  attn->to(torch::kFloat64);
  torch::NoGradGuard g;
  auto rope = make_rope_tables(c.max_seq_len, c.head_dim(), c.rope_theta);
  auto x = torch::randn({2, 7, c.dim}, torch::kFloat64);
  auto expected = reference_mha(x, attn->q_proj->weight, attn->k_proj->weight, attn->v_proj->weight, attn->o_proj->weight, 4, rope);
  EXPECT_TRUE(torch::allclose(attn(x, rope), expected, 1e-10, 1e-12));
}

TEST(Model, GqaSharesEachKvHeadWithConsecutiveQueryHeads) {
  // GQA with 4 query heads and 2 KV heads equals MHA whose KV weights repeat KV head j for
  // query heads 2j and 2j+1 (Hugging Face's repeat_kv order).
  torch::manual_seed(8);
  auto c = small_config(4, 2);
  Attention attn(c);
  attn->to(torch::kFloat64);
  torch::NoGradGuard g;
  const int64_t D = c.head_dim();
  auto repeat = [&](const torch::Tensor& w) {
    std::vector<torch::Tensor> rows;
    for (int64_t h = 0; h < 4; ++h) rows.push_back(w.narrow(0, (h / 2) * D, D));
    return torch::cat(rows, 0);
  };
  auto rope = make_rope_tables(c.max_seq_len, D, c.rope_theta);
  auto x = torch::randn({2, 7, c.dim}, torch::kFloat64);
  auto expected = reference_mha(x, attn->q_proj->weight, repeat(attn->k_proj->weight), repeat(attn->v_proj->weight), attn->o_proj->weight, 4, rope);
  EXPECT_TRUE(torch::allclose(attn(x, rope), expected, 1e-10, 1e-12));
}

TEST(Model, RopeEqualsDirectRotation) {
  const int64_t D = 8;
  const double theta = 500000.0;
  auto rope = make_rope_tables(64, D, theta);
  auto x = torch::randn({1, 1, 64, D}, torch::kFloat64);
  auto out = apply_rope(x, rope);
  for (int64_t p : {0, 1, 5, 17, 63}) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / D);
      const double a = x[0][0][p][i].item<double>(), b = x[0][0][p][i + D / 2].item<double>();
      // Tables are stored in float32, so compare at float32 precision of cos/sin.
      EXPECT_NEAR(out[0][0][p][i].item<double>(), a * std::cos(angle) - b * std::sin(angle), 1e-6) << "p=" << p << " i=" << i;
      EXPECT_NEAR(out[0][0][p][i + D / 2].item<double>(), b * std::cos(angle) + a * std::sin(angle), 1e-6) << "p=" << p << " i=" << i;
    }
  }
}

TEST(ModelGradcheck, ChunkedHeadAndLoss) {
  torch::manual_seed(6);
  auto hidden = rand64({2, 9, 8});
  auto weight = rand64({23, 8});
  auto targets = torch::randint(23, {2, 9}, torch::kInt64);
  // 18 tokens in chunks of 4 (the last one short); a large z weight, as above.
  expect_gradients_match([&] { return chunked_lm_loss(hidden, weight, targets, 0.1, 4).total; }, {hidden, weight},
                         "chunked head loss");
  // The metrics' outputs carry gradients too (nothing else may rely on total alone).
  expect_gradients_match([&] {
    auto p = chunked_lm_loss(hidden, weight, targets, 0.1, 5);
    return p.ce * 0.3 + p.z * 0.7;
  }, {hidden, weight}, "chunked ce and z");
}

TEST(Model, ChunkedLossEqualsThePlainPath) {
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    torch::manual_seed(10);
    auto c = small_config(4, 2);
    Llama plain(c), chunked(c);
    plain->to(dtype);
    chunked->to(dtype);
    {
      torch::NoGradGuard no_grad;
      auto from = plain->parameters();
      auto to = chunked->parameters();
      for (size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
    }
    auto tokens = torch::randint(c.vocab_size, {3, 11}, torch::kInt64);
    auto targets = torch::randint(c.vocab_size, {3, 11}, torch::kInt64);
    const LossParts a = lm_loss(plain(tokens), targets, 0.05);
    const LossParts b = chunked_lm_loss(chunked->hidden(tokens), chunked->lm_head->weight, targets, 0.05, 7);
    a.total.backward();
    b.total.backward();
    const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
    EXPECT_NEAR(a.ce.item<double>(), b.ce.item<double>(), tol);
    EXPECT_NEAR(a.z.item<double>(), b.z.item<double>(), tol * 10);
    EXPECT_NEAR(a.total.item<double>(), b.total.item<double>(), tol);
    auto pa = plain->named_parameters();
    auto pb = chunked->named_parameters();
    for (const auto& item : pa) {
      const torch::Tensor ga = item.value().grad(), gb = pb[item.key()].grad();
      ASSERT_TRUE(ga.defined() && gb.defined()) << item.key();
      const double scale = std::max(1.0, ga.abs().max().item<double>());
      EXPECT_LE((ga - gb).abs().max().item<double>(), tol * scale) << item.key() << " in " << c10::toString(dtype);
    }
  }
}

TEST(Model, LossMatchesDirectComputation) {
  torch::manual_seed(9);
  auto logits = torch::randn({2, 3, 5}, torch::kFloat64) * 3;
  auto targets = torch::randint(5, {2, 3}, torch::kInt64);
  auto parts = lm_loss(logits, targets, 0.5);
  double ce = 0, z = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 3; ++t) {
      double sum = 0;
      for (int v = 0; v < 5; ++v) sum += std::exp(logits[b][t][v].item<double>());
      const double lse = std::log(sum);
      ce += lse - logits[b][t][targets[b][t].item<int64_t>()].item<double>();
      z += lse * lse;
    }
  EXPECT_NEAR(parts.ce.item<double>(), ce / 6, 1e-12);
  EXPECT_NEAR(parts.z.item<double>(), z / 6, 1e-12);
  EXPECT_NEAR(parts.total.item<double>(), ce / 6 + 0.5 * z / 6, 1e-12);
}

TEST(Model, HuggingFaceParameterNames) {
  auto c = small_config();
  Llama m(c);
  std::vector<std::string> names;
  for (auto& item : m->named_parameters()) names.push_back(item.key());
  const std::vector<std::string> expected_some = {
      "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
      "model.layers.0.post_attention_layernorm.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
      "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"};
  for (const auto& n : expected_some) EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_EQ(names.size(), 2u + 2 * 9u + 1u);
  EXPECT_EQ(m->named_parameters()["model.layers.0.self_attn.k_proj.weight"].sizes(), torch::IntArrayRef({2 * 4, 16}));
}
