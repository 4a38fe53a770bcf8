// diloco.overlap = delayed | eager: the pseudo-gradient all-reduce of round t runs in the
// background while round t+1 computes (docs/algorithms.md, "Communication behind compute").
//
// At the end of round t+1, on the trainer's thread:
//   finish_flight     wait for Delta^t (usually done already), theta, m <- outer step(Delta^t),
//                     log round t (its hash is theta_t's, the same on every node)
//   delta = s - x     this round's progress from the point it started (s)
//   meet              barrier and run-state check, joiners held back (told how many wait)
//   drain?            the last round, a checkpoint, or joiners waiting: all-reduce delta now,
//                     step to theta_{t+1}, x = s = theta_{t+1}; joiners are admitted at a
//                     second meeting and receive a completed round (nothing in flight)
//   else              start all-reduce(delta) in the background; the next round starts from
//                       delayed: s = theta_t - delta
//                       eager:   s = theta_t - lr (delta + mu (mu m_t + delta))
//                     (the outer step with this node's delta in place of the missing mean)
// Every member runs the same collective operations in the same order whichever path it
// takes (meet, then the all-reduce of its round), so a node may drain alone (a checkpoint).

#include "core/assert.h"
#include "train/trainer.h"

namespace meridian::train {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

Status Trainer::finish_flight(bool* restarted) {
  *restarted = false;
  if (!flight_) return Status::ok();
  Flight f = std::move(*flight_);
  flight_.reset();
  const auto t0 = Clock::now();
  MERIDIAN_RETURN_IF_ERROR(options_.round_sync->finish_all_reduce_mean(&f.round.stats));
  const double wait_s = seconds_since(t0);
  if (f.round.stats.restarted) {
    *restarted = true;
    restart_round(f.round.stats);
    return Status::ok();
  }
  const auto t1 = Clock::now();
  outer_->apply(in_flight_);
  log_outer_round(f.round, f.norm, seconds_since(t1), f.round_s, wait_s);
  return Status::ok();
}

Status Trainer::catch_up_with_run(bool* restarted) {
  *restarted = false;
  if (!flight_ || !options_.round_sync->behind_the_run()) return Status::ok();
  return finish_flight(restarted);
}

Status Trainer::settle() {
  if (!flight_) return Status::ok();
  bool restarted = false;
  MERIDIAN_RETURN_IF_ERROR(finish_flight(&restarted));
  if (restarted) return Status::ok();
  torch::NoGradGuard no_grad;
  // x <- theta - (s - x): the progress since s, now on top of the new theta.
  const torch::Tensor progress = outer_->pseudo_gradient_from(start_);
  outer_->copy_to_params(outer_->theta() - progress);
  start_.copy_(outer_->theta());
  return Status::ok();
}

Status Trainer::overlapped_outer_step(bool drain, bool last) {
  MERIDIAN_ASSERT(overlapped() && !fsdp_, "overlapped_outer_step: diloco.overlap with one local rank only");
  torch::NoGradGuard no_grad;
  bool restarted = false;
  MERIDIAN_RETURN_IF_ERROR(finish_flight(&restarted));
  if (restarted) return Status::ok();  // this node's round was void; the run's round begins

  const torch::Tensor delta = outer_->pseudo_gradient_from(start_);  // outer's scratch buffer
  const double norm = delta.norm().item<double>();
  in_flight_.copy_(delta);
  Round done = std::move(round_);
  done.end_step = step_;
  round_ = Round{};

  // The next round's start. Its meeting's time belongs to this round's window (the windows
  // tile the run: utilization = compute / window, as without overlap).
  round_start_.reset();  // the counters the meeting publishes are the current ones
  size_t joiners = 0;
  RoundStats meeting;
  MERIDIAN_RETURN_IF_ERROR(options_.round_sync->begin_round(*this, &meeting, /*admit_joiners=*/false, &joiners));
  done.stats.nodes = meeting.nodes;
  done.stats.barrier_s += meeting.barrier_s;
  done.stats.state_sync_s += meeting.state_sync_s;
  done.stats.state_bytes_downloaded += meeting.state_bytes_downloaded;
  if (meeting.joined) {
    // This node was behind the run (evicted while frozen, admitted again at this meeting) and
    // took the run's state: its delta is void, and the run's round begins for it now, as for
    // the others (nothing of it is in flight).
    restart_round(done.stats);
    return Status::ok();
  }
  const auto count = static_cast<size_t>(in_flight_.numel());
  if (drain || joiners > 0) {
    const auto t0 = Clock::now();
    MERIDIAN_RETURN_IF_ERROR(options_.round_sync->all_reduce_mean(in_flight_.data_ptr<float>(), count, &done.stats));
    if (done.stats.restarted) {
      restart_round(done.stats);
      return Status::ok();
    }
    const double wait_s = seconds_since(t0);
    outer_->step(in_flight_);  // params <- theta
    start_.copy_(outer_->theta());
    log_outer_round(done, norm, seconds_since(t0) - wait_s, seconds_since(done.start), wait_s);
    round_.start = Clock::now();
    if (joiners > 0 && !last) {
      if (options_.out) {
        std::fprintf(options_.out, "# %zu joiner%s waiting: nothing in flight now, admitting\n", joiners, joiners == 1 ? "" : "s");
        std::fflush(options_.out);
      }
      round_start_.reset();
      size_t unused = 0;
      MERIDIAN_RETURN_IF_ERROR(options_.round_sync->begin_round(*this, &round_.stats, /*admit_joiners=*/true, &unused));
      start_.copy_(outer_->theta());
    }
  } else {
    // Where the next round starts, from theta_t (m_t) and this node's delta (docs/algorithms.md).
    outer_->overlap_start(in_flight_, config_.diloco.overlap == "eager", start_);
    options_.round_sync->start_all_reduce_mean(in_flight_.data_ptr<float>(), count);
    outer_->copy_to_params(start_);
    flight_ = Flight{std::move(done), norm, 0.0};
    flight_->round_s = seconds_since(flight_->round.start);
    round_.start = Clock::now();
  }
  round_open_ = true;
  return Status::ok();
}

}  // namespace meridian::train
