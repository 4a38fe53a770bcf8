// Writes the inputs and outputs of one forward/backward of a small Llama for the golden test:
//   <dir>/model.safetensors   the weights (Hugging Face names)
//   <dir>/golden.safetensors  tokens, targets, and for fp32 and fp64: logits, loss parts, grads
// tests/golden/golden_llama.py recomputes all of it with an independent PyTorch model.
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

#include "io/safetensors.h"
#include "model/llama.h"

using namespace meridian;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: golden_dump DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  torch::manual_seed(20261122);
  torch::set_num_threads(1);
  ModelConfig c;
  c.vocab_size = 97;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 48;
  c.max_seq_len = 64;
  c.rope_theta = 500000.0;
  c.norm_eps = 1e-5;
  c.init_std = 0.1;
  const double z_loss_weight = 1e-2;
  model::Llama m(c);
  {
    torch::NoGradGuard g;  // non-trivial norm weights, so a wrong norm formula shows
    for (auto& item : m->named_parameters())
      if (item.key().find("norm") != std::string::npos) item.value().uniform_(0.5, 1.5);
  }
  auto tokens = torch::randint(c.vocab_size, {3, 24}, torch::kInt64);
  auto targets = torch::randint(c.vocab_size, {3, 24}, torch::kInt64);

  std::vector<torch::Tensor> keep;  // owns the bytes until the writers are done
  io::SafetensorsWriter weights, golden;
  auto add = [&](io::SafetensorsWriter& w, const std::string& name, torch::Tensor t) {
    t = t.detach().contiguous();
    keep.push_back(t);
    const auto dtype = t.scalar_type() == torch::kFloat64 ? io::DType::F64 : t.scalar_type() == torch::kInt64 ? io::DType::I64 : io::DType::F32;
    w.add(name, dtype, t.sizes().vec(), t.data_ptr(), t.nbytes());
  };
  for (auto& item : m->named_parameters()) add(weights, item.key(), item.value());
  weights.set_metadata("format", "pt");
  add(golden, "tokens", tokens);
  add(golden, "targets", targets);
  golden.set_metadata("config", "{\"vocab_size\": 97, \"dim\": 32, \"n_layers\": 2, \"n_heads\": 4, \"n_kv_heads\": 2, "
                                "\"ffn_dim\": 48, \"rope_theta\": 500000.0, \"norm_eps\": 1e-05, \"max_seq_len\": 64}");
  golden.set_metadata("z_loss_weight", "0.01");

  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    const std::string tag = dtype == torch::kFloat32 ? "f32" : "f64";
    m->to(dtype);
    for (auto& p : m->parameters())
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
    auto logits = m(tokens);
    auto loss = model::lm_loss(logits, targets, z_loss_weight);
    loss.total.backward();
    add(golden, tag + ".logits", logits);
    add(golden, tag + ".loss", loss.total.reshape({1}));
    add(golden, tag + ".ce", loss.ce.reshape({1}));
    add(golden, tag + ".z", loss.z.reshape({1}));
    for (auto& item : m->named_parameters()) add(golden, tag + ".grad." + item.key(), item.value().grad());
  }
  m->to(torch::kFloat32);
  if (auto s = weights.write((dir / "model.safetensors").string()); !s) {
    std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
    return 1;
  }
  if (auto s = golden.write((dir / "golden.safetensors").string()); !s) {
    std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
    return 1;
  }
  return 0;
}
