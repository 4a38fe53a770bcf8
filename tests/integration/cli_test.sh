#!/usr/bin/env bash
# Integration tests of the meridian binary as a user runs it: real processes, real files.
# Usage: cli_test.sh MERIDIAN_BINARY CASE. Each case prints its checks and ends with the line
# "N passed, N failed"; the exit status is non-zero if any check failed.
set -uo pipefail
bin=$1
case_name=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
passed=0
failed=0

check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1)); echo "ok   $what"
  else
    failed=$((failed + 1)); echo "FAIL $what"
  fi
}
contains() { grep -q -- "$2" "$1" || { echo "  expected '$2' in $1:"; sed 's/^/  | /' "$1"; return 1; }; }
# Runs meridian expecting failure; stderr goes to err.txt.
fails() { ! "$bin" "$@" > out.txt 2> err.txt; }

make_corpus() {
  # Paragraphs of two license texts (always present on Debian), one document each.
  awk 'BEGIN { RS = "" } { print; print "%" }' /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > corpus.txt
  "$bin" tokenize --input corpus.txt --output shards --val-fraction 0.05 --doc-separator % > /dev/null
}
tiny() {  # the tiny preset on the corpus, in run directory $1
  local dir=$1
  shift
  "$bin" train --preset tiny --set data.train_path=shards/train --set data.val_path=shards/val \
    --set run.dir="$dir" --set run.peak_tflops=1 --set train.threads=1 "$@"
}
fails_with_fault() { ! MERIDIAN_FAULT=$1 "$bin" info --model tiny > out.txt 2> err.txt; }
state_hash() { grep '^# state hash:' "$1" | awk '{print $4}'; }

case $case_name in
info)
  "$bin" info --model intellect-1-10b > info.json
  check "intellect-1-10b has 10211381248 parameters" contains info.json '"params": 10211381248'
  check "reports FLOPs per token" contains info.json '"flops_per_token"'
  check "reports AdamW state memory" contains info.json '"adamw_state_fp32": 81691049984'
  check "the head's logits: one chunk of 2048 tokens" contains info.json '"logits_fp32_per_copy": 1050673152'
  check "  ... against the whole 2 x 8192 micro-batch" contains info.json '"logits_fp32_per_copy_unchunked": 8405385216'
  check "one process does not fit an 80 GB H100" contains info.json '"fits_h100_80gb": false'
  "$bin" info --model intellect-1-10b --nproc-per-node 8 > info8.json
  # 1/8 of the root unit (2 x 128256 x 4096 + 4096) and of each of the 42 blocks (218,112,000), in fp32.
  check "G = 8: a rank's fp32 parameter shard" contains info8.json '"parameters_fp32": 5105690624'
  check "G = 8: the root unit gathered with its gradients" contains info8.json '"gathered_root": 12608126976'
  check "G = 8: one rank fits an 80 GB H100 at batch 2 x 8192 in bf16" contains info8.json '"fits_h100_80gb": true'
  "$bin" info --model intellect-1-10b --nproc-per-node 8 --set train.batch_size=16 > info8b.json
  check "G = 8, batch 16 x 8192: it does not" contains info8b.json '"fits_h100_80gb": false'
  ;;

bad-config)
  printf '[train]\nlr = 0.1\nsteps = = 3\n' > broken.toml
  check "malformed TOML fails" fails train --config broken.toml
  check "  ... naming file and line" contains err.txt 'broken.toml:3'
  printf '[train]\nlrr = 0.1\n' > unknown.toml
  check "unknown key fails" fails train --config unknown.toml
  check "  ... with a suggestion" contains err.txt "did you mean 'train.lr'"
  printf '[model]\ndim = "wide"\n' > wrong.toml
  check "wrong type fails" fails train --config wrong.toml
  check "  ... naming the expected type" contains err.txt "'model.dim' must be an integer, got string"
  check "missing config file fails" fails train --config nowhere.toml
  check "  ... naming the file" contains err.txt 'nowhere.toml'
  check "bad --set fails" fails train --set train.steps=ten
  check "  ... naming the value" contains err.txt "'ten' is not an integer"
  check "errors come with a hint line" contains err.txt '^hint: '
  ;;

bad-data)
  check "missing training data fails" fails train --preset tiny --set data.train_path=no/such/dir --set run.dir=r
  check "  ... naming the path" contains err.txt 'no/such/dir'
  check "  ... and how to make shards" contains err.txt 'meridian tokenize'
  make_corpus
  # A .txt without --doc-separator is one document: nothing can be held out for validation.
  "$bin" tokenize --input corpus.txt --output one-doc --val-fraction 0.05 > /dev/null 2> err.txt
  check "tokenize warns when no document went to validation" contains err.txt 'no document went to validation'
  check "  ... and says how to split documents" contains err.txt 'doc-separator'
  # A shard of another format version: patch the version field (offset 8) to 9.
  mkdir -p v9 && cp shards/train/shard_00000.tok v9/
  printf '\x09' | dd of=v9/shard_00000.tok bs=1 seek=8 conv=notrunc status=none
  check "shard of another version fails" fails train --preset tiny --set data.train_path=v9 --set data.val_path= --set run.dir=r
  check "  ... naming the version" contains err.txt 'version 9'
  # A truncated shard.
  mkdir -p cut && head -c 1000 shards/train/shard_00000.tok > cut/shard_00000.tok
  check "truncated shard fails" fails train --preset tiny --set data.train_path=cut --set data.val_path= --set run.dir=r
  check "  ... naming the file" contains err.txt 'cut/shard_00000.tok'
  ;;

bad-checkpoint)
  make_corpus
  tiny run --set train.steps=2 --set train.warmup_steps=1 > log.txt 2>&1
  ck=run/checkpoints/step_00000002
  check "a checkpoint was written" test -f $ck/model.safetensors
  cp -r run run-cut
  truncate -s -100 run-cut/checkpoints/step_00000002/model.safetensors
  check "resume from truncated checkpoint fails" fails train --resume run-cut
  check "  ... naming the file and defect" contains err.txt 'model.safetensors.*truncated'
  cp -r run run-garbage
  printf 'garbage!' | dd of=run-garbage/checkpoints/step_00000002/state.safetensors bs=1 seek=0 conv=notrunc status=none
  check "resume from corrupt checkpoint fails" fails train --resume run-garbage
  check "  ... naming the file" contains err.txt 'state.safetensors'
  check "resume from nothing fails" fails train --resume no-such-run
  check "  ... naming the path" contains err.txt 'no-such-run'
  check "resume with another model shape fails" fails train --resume run --preset tiny --set model.dim=32 \
    --set data.train_path=shards/train --set data.val_path=shards/val --set run.dir=run
  check "  ... saying so" contains err.txt 'another model shape'
  ;;

resume)
  make_corpus
  tiny straight --set train.steps=12 > straight.txt 2>&1
  tiny split --set train.steps=12 --set train.stop_at_step=6 > first.txt 2>&1
  "$bin" train --resume split > second.txt 2>&1
  check "straight run finished" contains straight.txt 'done: steps 1-12'
  check "first half stopped at step 6" contains first.txt 'done: steps 1-6'
  check "second half resumed at step 7" contains second.txt 'done: steps 7-12'
  a=$(state_hash straight.txt)
  b=$(state_hash second.txt)
  check "12 straight == 6 + resume + 6, bit for bit ($a)" test -n "$a" -a "$a" = "$b"
  check "metrics.jsonl has a line per step" test "$(grep -c '"type":"inner"' split/metrics.jsonl)" -eq 12
  check "resolved config saved" contains split/config.toml 'stop_at_step'
  check "Hugging Face config.json written" contains split/checkpoints/step_00000012/config.json '"model_type": "llama"'
  check "a fresh run into a used run directory fails" fails train --preset tiny --set data.train_path=shards/train --set data.val_path= --set run.dir=split
  check "  ... pointing at --resume" contains err.txt 'resume split'
  ;;

kill-resume)
  # SIGKILL a run right after a checkpoint and resume it: the last complete checkpoint loads and
  # the resumed run ends where an uninterrupted one does.
  make_corpus
  tiny straight --set train.steps=16 --set train.checkpoint_every=4 > straight.txt 2>&1
  coproc RUN { exec "$bin" train --preset tiny --set data.train_path=shards/train --set data.val_path=shards/val \
    --set run.dir=killed --set run.peak_tflops=1 --set train.threads=1 --set train.steps=16 --set train.checkpoint_every=4 2>&1; }
  pid=$RUN_PID
  # Read the progress lines until step 9 is reported (the step-8 checkpoint is then complete).
  while IFS= read -r -t 120 line <&"${RUN[0]}"; do
    case $line in "step      9/16"*) break ;; esac
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  check "the killed run left a complete checkpoint" test -f killed/checkpoints/step_00000008/state.safetensors
  check "  ... and latest points to it" contains killed/checkpoints/latest 'step_00000008'
  "$bin" train --resume killed > resumed.txt 2>&1
  check "resume continued at step 9" contains resumed.txt 'done: steps 9-16'
  a=$(state_hash straight.txt)
  b=$(state_hash resumed.txt)
  check "killed + resumed == uninterrupted, bit for bit" test -n "$a" -a "$a" = "$b"
  ;;

mixture)
  # Two datasets drawn 3:1; the mixture cursor survives a resume bit-exactly.
  make_corpus
  awk 'BEGIN { RS = "" } { print; print "%" }' /usr/share/common-licenses/GPL-2 /usr/share/common-licenses/LGPL-2.1 > other.txt
  "$bin" tokenize --input other.txt --output other --doc-separator % > /dev/null
  mix="gpl3:3:shards/train, older:1:other/train"
  check "malformed mixture fails" fails train --preset tiny --set "data.mixture=gpl3:x:shards/train" --set run.dir=m
  check "  ... naming the weight" contains err.txt "weight 'x' of 'gpl3' must be a positive number"
  check "mixture with a missing dataset fails" fails train --preset tiny --set "data.mixture=a:1:nowhere" --set data.val_path= --set run.dir=m
  check "  ... naming the path" contains err.txt 'nowhere'
  tiny mstraight --set "data.mixture=$mix" --set train.steps=10 > straight.txt 2>&1
  tiny msplit --set "data.mixture=$mix" --set train.steps=10 --set train.stop_at_step=5 > first.txt 2>&1
  "$bin" train --resume msplit > second.txt 2>&1
  check "mixture run finished" contains straight.txt 'done: steps 1-10'
  check "mixture resume continued at step 6" contains second.txt 'done: steps 6-10'
  a=$(state_hash straight.txt)
  b=$(state_hash second.txt)
  check "mixture: 10 straight == 5 + resume + 5, bit for bit" test -n "$a" -a "$a" = "$b"
  check "the mixture cursor is in the checkpoint" grep -q 'meridian.data_mixture_cursor' msplit/checkpoints/step_00000010/state.safetensors
  ;;

checkpoint-crash)
  # SIGKILL at every fault point of a checkpoint save (core/fault.h), in the second of three
  # saves: the last good checkpoint loads, and --resume ends bit-exactly where an uninterrupted
  # run ends.
  make_corpus
  tiny straight --set train.steps=12 --set train.checkpoint_every=4 > straight.txt 2>&1
  a=$(state_hash straight.txt)
  # checkpoint.* are reached once per save, safetensors.* and file.* twice (model + state;
  # config.json + latest), so @2 / @3 / @4 fall in the second save.
  for point in checkpoint.begin@2 checkpoint.model_written@2 checkpoint.state_written@2 checkpoint.tmp_synced@2 \
               checkpoint.renamed@2 checkpoint.latest_written@2 safetensors.written@3 safetensors.synced@4 \
               file.written@3 file.synced@3 file.written@4 file.synced@4; do
    dir=k_${point//[.@]/_}
    MERIDIAN_FAULT=$point tiny "$dir" --set train.steps=12 --set train.checkpoint_every=4 > "$dir.txt" 2>&1
    code=$?
    check "$point: killed there (exit $code)" contains "$dir.txt" "fault point ${point%@*} reached (kill)"
    "$bin" train --resume "$dir" > "$dir.resumed.txt" 2>&1
    check "  ... resumed from the last good checkpoint" contains "$dir.resumed.txt" 'done: steps [59]-12'
    b=$(state_hash "$dir.resumed.txt")
    check "  ... and ended bit-exactly as the uninterrupted run" test -n "$a" -a "$a" = "$b"
  done
  check "a malformed MERIDIAN_FAULT is a clear error" fails_with_fault checkpoint.begin@0
  check "  ... naming the spec and the syntax" contains err.txt "fault spec 'checkpoint.begin@0'"
  ;;

disk-full)
  # A save on a full disk (a small tmpfs) fails with a clear error and damages nothing: the
  # checkpoint before it still resumes.
  make_corpus
  mkdir -p small
  if ! mount -t tmpfs -o size=4m tmpfs small 2> /dev/null; then
    echo "skipped: cannot mount a tmpfs here (needs root)"
    echo "0 passed, 0 failed"
    exit 0
  fi
  trap 'umount "$work/small" 2> /dev/null; rm -rf "$work"' EXIT
  tiny small/run --set train.steps=8 --set train.checkpoint_every=4 --set train.stop_at_step=4 > first.txt 2>&1
  check "the first part saved step 4" test -f small/run/checkpoints/step_00000004/state.safetensors
  # Leave less room than one checkpoint takes.
  ck_kb=$(du -sk small/run/checkpoints/step_00000004 | cut -f1)
  free_kb=$(df -k --output=avail small | tail -1)
  dd if=/dev/zero of=small/filler bs=1k count=$((free_kb - ck_kb / 2)) 2> /dev/null
  "$bin" train --resume small/run > full.txt 2> full.err
  code=$?
  check "the save on a full disk fails (exit $code)" test "$code" -ne 0
  check "  ... with an error naming the cause" contains full.err 'No space left on device'
  check "  ... and a hint" contains full.err 'hint:'
  check "  ... latest still names step 4" contains small/run/checkpoints/latest 'step_00000004'
  rm -f small/filler
  "$bin" train --resume small/run > again.txt 2>&1
  check "with room again, the run resumes from step 4 and finishes" contains again.txt 'done: steps 5-8'
  ;;

*)
  echo "unknown case $case_name" >&2
  exit 2
  ;;
esac

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
