// The ring of local rank r > 0 of a node of G local ranks (DESIGN.md, "The two-level mesh"):
// local rank r of every node of the view all-reduces shard r of the pseudo-gradient over a mesh
// of its own, beside rank 0's (the communicator's), so G all-reduces run in parallel and no
// rank holds more than its shard. Membership stays per node: rank 0 registers the node, with
// the address of every rank's ring listener (membership::ViewMember::rank_addresses), and
// tells rank r which operation to run; the operation's one final status, from the
// coordinator, reaches rank r through rank 0 (net::OtherRings, train/local_ranks.cpp).
//
// The mesh is the authenticated MeshTransport of the view's epoch among the same-numbered ranks
// of the view's nodes, built at the first operation of an epoch, on a listening socket that
// this ring keeps for its life. Torch-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "net/collective/all_reduce.h"
#include "net/membership/mesh_transport.h"

namespace meridian::net {

class RankRing {
 public:
  // Listens on listen_address ("host:0": the OS picks the port); address() is what rank 0
  // registers for this rank.
  static Result<std::unique_ptr<RankRing>> listen(const std::string& token, const std::string& listen_address,
                                                  size_t streams_per_peer = 2);
  ~RankRing();
  RankRing(const RankRing&) = delete;
  RankRing& operator=(const RankRing&) = delete;
  const std::string& address() const { return address_; }

  // This rank's part of all-reduce (epoch, options.op_id) over `buffer`: self is this node's
  // rank in the view, addresses[i] the ring address of the same local rank on node i. On error
  // the buffer is as before. After a success, restore_input() puts it back (the final status
  // was not ok).
  NetStatus run(uint64_t epoch, size_t self, const std::vector<std::string>& addresses, std::span<float> buffer,
                const AllReduceOptions& options, AllReduceStats* stats);
  bool restore_input() { return runner_ ? runner_->restore_input() : false; }
  // Any thread: the running (or next) run() returns an error soon (rank 0 saw the operation fail).
  void interrupt(const std::string& reason);
  void clear_interrupts();

 private:
  RankRing() = default;
  std::string token_;
  size_t streams_per_peer_ = 2;
  int listen_fd_ = -1;
  std::string address_;
  uint64_t epoch_ = 0;                  // of the mesh
  std::vector<std::string> addresses_;  // of the mesh
  size_t self_ = 0;
  std::atomic<bool> interrupted_{false};  // stops a mesh build too
  std::mutex mutex_;                    // guards mesh_ against interrupt()
  std::unique_ptr<membership::MeshTransport> mesh_;
  std::unique_ptr<AllReduceRunner> runner_;
};

}  // namespace meridian::net
