// The Llama-3 decoder (DESIGN.md section 3) on libtorch: token embedding, L blocks of
// (RMSNorm -> grouped-query attention with RoPE -> residual -> RMSNorm -> SwiGLU -> residual),
// final RMSNorm, untied LM head.
//
// Parameter names are Hugging Face transformers' Llama names ("model.layers.0.self_attn.
// q_proj.weight", ...) and RoPE uses the rotate-half convention, so a checkpoint loads there
// without conversion. Dims: B batch, T time, C model dim, H query heads, Hkv key/value heads,
// D head dim, V vocab, L layers.
#pragma once

#include <torch/torch.h>

#include <optional>

#include "config/config.h"

namespace meridian::model {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  // x [..., C] -> [..., C]; normalised in fp32, then scaled in x's dtype (as HF does).
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [C], init 1
 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// cos/sin tables of rotate-half RoPE: inv_freq[i] = theta^(-2i/D), angle[t][i] = t * inv_freq[i],
// and both halves of the last dim repeat the D/2 angles.
struct RopeTables {
  torch::Tensor cos;  // f32 [T_max, D]
  torch::Tensor sin;  // f32 [T_max, D]
};
RopeTables make_rope_tables(int64_t max_seq_len, int64_t head_dim, double theta);
// x [B, heads, T, D] -> x * cos + rotate_half(x) * sin, positions 0..T-1.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& config);
  // x [B, T, C] -> [B, T, C], causal.
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

// Causal softmax attention over q [B, H, T, D] with k, v [B, H, T, D] (already repeated for GQA).
// scaled_dot_product_attention on libtorch >= 2.0, an explicit masked softmax otherwise.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t dim, int64_t ffn_dim);
  // down(silu(gate(x)) * up(x))
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const RopeTables& rope);

  RMSNorm input_layernorm{nullptr};
  Attention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

// The "model." prefix of Hugging Face's LlamaForCausalLM.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const ModelConfig& config);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Decoder);

class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const ModelConfig& config);
  // tokens i64 [B, T] -> logits [B, T, V] (fp32, also under autocast).
  torch::Tensor forward(const torch::Tensor& tokens);
  // tokens i64 [B, T] -> the final norm's output [B, T, C], the head's input: forward(tokens)
  // is lm_head(hidden(tokens)). With chunked_lm_loss it never materialises [B, T, V].
  torch::Tensor hidden(const torch::Tensor& tokens);
  // Normal(0, init_std) for linear and embedding weights, ones for norms; uses torch's RNG.
  void reset_parameters();
  const ModelConfig& config() const { return config_; }
  const RopeTables& rope() const { return rope_; }

  Decoder model{nullptr};
  torch::nn::Linear lm_head{nullptr};
 private:
  ModelConfig config_;
  RopeTables rope_;
};
TORCH_MODULE(Llama);

struct LossParts {
  torch::Tensor total;    // scalar: ce + z_loss_weight * z
  torch::Tensor ce;       // scalar: mean cross-entropy (nats/token)
  torch::Tensor z;        // scalar: mean of logsumexp(logits)^2 (unweighted)
};
// logits [B, T, V], targets i64 [B, T]. The z-loss penalises the squared log-partition function
// so logits do not drift (PaLM, INTELLECT-1 with weight 2e-4).
LossParts lm_loss(const torch::Tensor& logits, const torch::Tensor& targets, double z_loss_weight);

// The head and lm_loss together, chunk_tokens rows of [B*T] at a time, so that the logits of at
// most chunk_tokens tokens exist at once (forward and backward: the backward recomputes each
// chunk's logits from hidden and keeps only the per-token log-sum-exp between the passes).
// hidden [B, T, C] (LlamaImpl::hidden), head_weight [V, C] (lm_head->weight), targets i64 [B, T].
// The head's matmuls run in `compute` (bf16 under train.bf16, as autocast would; default: the
// hidden's dtype), the softmax and the sums in fp32 (fp64 for fp64 inputs). Equal to
// lm_loss(lm_head(hidden)) up to rounding, gradients included (tests/unit/model_llama_test.cpp).
LossParts chunked_lm_loss(const torch::Tensor& hidden, const torch::Tensor& head_weight, const torch::Tensor& targets,
                          double z_loss_weight, int64_t chunk_tokens,
                          std::optional<torch::ScalarType> compute = std::nullopt);

}  // namespace meridian::model
