// Every configuration option, declared exactly once: section, type, name, default, unit, help
// (STYLE.md habit 10). The config structs, the TOML loader, `--set`, the printed resolved config
// and the config hash are all generated from these lists.
#pragma once

// X(type, name, default, unit, help)
#define MERIDIAN_MODEL_OPTIONS(X)                                                                  \
  X(std::string, name, "demo", "", "preset name, for logs")                                        \
  X(int64_t, vocab_size, 259, "tokens", "rows of the embedding and the LM head")                   \
  X(int64_t, dim, 192, "", "hidden size C")                                                        \
  X(int64_t, n_layers, 4, "", "transformer blocks L")                                              \
  X(int64_t, n_heads, 6, "", "query heads H")                                                      \
  X(int64_t, n_kv_heads, 2, "", "key/value heads Hkv (grouped-query attention); divides n_heads") \
  X(int64_t, ffn_dim, 512, "", "SwiGLU hidden size")                                               \
  X(int64_t, max_seq_len, 1024, "tokens", "longest context the RoPE tables cover")                 \
  X(double, rope_theta, 10000.0, "", "RoPE base frequency")                                        \
  X(double, norm_eps, 1e-5, "", "RMSNorm epsilon")                                                 \
  X(double, init_std, 0.02, "", "std of the normal init of linear and embedding weights")

#define MERIDIAN_TRAIN_OPTIONS(X)                                                                  \
  X(int64_t, steps, 300, "steps", "total optimizer steps (the schedule spans them)")               \
  X(int64_t, stop_at_step, 0, "steps", "stop early after this step, keeping the schedule (0: run all)") \
  X(int64_t, batch_size, 16, "sequences", "micro-batch size B (per local rank)")                  \
  X(int64_t, nproc_per_node, 1, "ranks", "local ranks of this node, one process each, sharding the model (FSDP)") \
  X(int64_t, grad_accum, 1, "micro-batches", "micro-batches accumulated per optimizer step")      \
  X(int64_t, seq_len, 128, "tokens", "sequence length T")                                          \
  X(double, lr, 3e-3, "", "peak learning rate")                                                    \
  X(double, min_lr, 3e-4, "", "learning rate at the end of the decay")                             \
  X(int64_t, warmup_steps, 30, "steps", "linear warmup from 0 to lr")                              \
  X(double, decay_fraction, 0.2, "", "share of the steps spent decaying (WSD)")                    \
  X(std::string, decay, "sqrt", "", "decay shape: linear | cosine | sqrt")                        \
  X(double, beta1, 0.9, "", "AdamW beta1")                                                         \
  X(double, beta2, 0.95, "", "AdamW beta2")                                                        \
  X(double, eps, 1e-8, "", "AdamW epsilon")                                                        \
  X(double, weight_decay, 0.1, "", "AdamW decoupled weight decay")                                 \
  X(double, grad_clip, 1.0, "", "global gradient-norm clip (0: off)")                              \
  X(double, z_loss_weight, 2e-4, "", "weight of the z-loss: mean squared log-sum-exp of logits")  \
  X(int64_t, loss_chunk_tokens, 2048, "tokens", "head + loss over this many tokens at a time: bounds the logits' memory (0: all at once)") \
  X(bool, bf16, false, "", "bf16 autocast for the forward pass")                                   \
  X(int64_t, seed, 1234, "", "seed of the init and of the data order")                             \
  X(int64_t, threads, 0, "", "intra-op threads (0: all cores)")                                    \
  X(std::string, device, "cpu", "", "cpu | cuda (cuda needs a CUDA build of libtorch)")               \
  X(int64_t, log_every, 1, "steps", "progress line and metrics every N steps")                     \
  X(int64_t, eval_every, 100, "steps", "validation loss every N steps (0: only at the end)")        \
  X(int64_t, eval_batches, 8, "micro-batches", "micro-batches per validation")                    \
  X(int64_t, checkpoint_every, 0, "steps", "checkpoint every N steps (0: only at the end)")        \
  X(int64_t, keep_checkpoints, 3, "", "checkpoints kept in the run directory")

#define MERIDIAN_DILOCO_OPTIONS(X)                                                                 \
  X(bool, enabled, false, "", "DiLoCo outer loop: an outer Nesterov step every inner_steps steps")   \
  X(int64_t, inner_steps, 100, "steps", "H: inner steps per outer round")                          \
  X(double, outer_lr, 0.7, "", "outer Nesterov learning rate")                                     \
  X(double, outer_momentum, 0.9, "", "outer Nesterov momentum (lower, e.g. 0.5, for few rounds or a large inner lr)") \
  X(std::string, codec, "int8", "", "pseudo-gradient wire codec: int8 | fp32 | bf16 | fp16")        \
  X(std::string, overlap, "none", "", "the all-reduce behind the next round's compute: none | delayed | eager (docs/algorithms.md)") \
  X(int64_t, min_nodes, 1, "nodes", "the first round waits until this many nodes are there")         \
  X(double, round_timeout_s, 1800, "s", "longest wait at a round start for the other nodes")

#define MERIDIAN_DATA_OPTIONS(X)                                                                   \
  X(std::string, train_path, "data/demo/train", "", "shard file or directory of *.tok shards")    \
  X(std::string, val_path, "data/demo/val", "", "validation shards (empty: no validation)")       \
  X(std::string, tokenizer, "bytes", "", "tokenizer of the shards: bytes | llama3 | a file")     \
  X(std::string, mixture, "", "", "datasets drawn in proportion, \"name:weight:path, ...\" (replaces train_path)")

#define MERIDIAN_RUN_OPTIONS(X)                                                                    \
  X(std::string, dir, "runs/demo", "", "run directory: resolved config, metrics, checkpoints")    \
  X(double, peak_tflops, 0.0, "TFLOP/s", "peak of the device for MFU (0: measure fp32 matmul)")

// section name, option list
#define MERIDIAN_CONFIG_SECTIONS(S) \
  S(model, MERIDIAN_MODEL_OPTIONS)  \
  S(train, MERIDIAN_TRAIN_OPTIONS)  \
  S(diloco, MERIDIAN_DILOCO_OPTIONS) \
  S(data, MERIDIAN_DATA_OPTIONS)    \
  S(run, MERIDIAN_RUN_OPTIONS)
