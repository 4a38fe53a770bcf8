#include "net/rank_ring.h"

#include <unistd.h>

#include "net/membership/socket_io.h"

namespace meridian::net {

namespace ms = membership;

Result<std::unique_ptr<RankRing>> RankRing::listen(const std::string& token, const std::string& listen_address,
                                                   size_t streams_per_peer) {
  if (token.empty()) return Status::error("rank ring: empty run token", "pass the run's token file");
  Result<ms::Listener> l = ms::listen_tcp(listen_address);
  if (!l) return l.status().with_context("the ring of a local rank");
  std::unique_ptr<RankRing> r(new RankRing());
  r->token_ = token;
  r->streams_per_peer_ = streams_per_peer;
  r->listen_fd_ = l->fd;
  r->address_ = l->address;
  return r;
}

RankRing::~RankRing() {
  runner_.reset();
  mesh_.reset();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void RankRing::interrupt(const std::string& reason) {
  interrupted_ = true;
  std::lock_guard<std::mutex> lock(mutex_);
  if (mesh_) mesh_->interrupt(reason);
}

void RankRing::clear_interrupts() {
  interrupted_ = false;
  std::lock_guard<std::mutex> lock(mutex_);
  if (mesh_) mesh_->clear_interrupts();
}

NetStatus RankRing::run(uint64_t epoch, size_t self, const std::vector<std::string>& addresses, std::span<float> buffer,
                        const AllReduceOptions& options, AllReduceStats* stats) {
  if (self >= addresses.size())
    return NetStatus::error(NetCode::kProtocol, kNoPeer, "rank ring: node rank " + std::to_string(self) + " of " +
                                                             std::to_string(addresses.size()));
  if (!mesh_ || epoch != epoch_ || self != self_ || addresses != addresses_) {
    std::unique_ptr<ms::MeshTransport> old;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old = std::move(mesh_);
    }
    runner_.reset();
    old.reset();  // closes the previous view's connections
    ms::MeshTransportOptions mo;
    mo.token = token_;
    mo.epoch = epoch;
    mo.streams_per_peer = streams_per_peer_;
    auto mesh = std::make_unique<ms::MeshTransport>(mo, listen_fd_);
    const Status st = mesh->connect_mesh(static_cast<PeerId>(self), addresses, ms::steady_now_us() + options.timeout_ms * 1000,
                                         [this] { return interrupted_.load(); });
    if (!st.is_ok()) return NetStatus::error(NetCode::kPeerLost, kNoPeer, "rank ring of view epoch " + std::to_string(epoch) + ": " + st.message());
    epoch_ = epoch;
    self_ = self;
    addresses_ = addresses;
    runner_ = std::make_unique<AllReduceRunner>(*mesh);
    std::lock_guard<std::mutex> lock(mutex_);
    mesh_ = std::move(mesh);
  }
  std::vector<PeerId> ranks(addresses.size());
  for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<PeerId>(i);
  return runner_->run(ranks, buffer, options, stats);
}

}  // namespace meridian::net
