// Processes (DESIGN.md §6, docs/distributed.md): the small interface the MoE layer and the
// trainer see. A ProcessGroup is one communicator: its rank and size, exchanging counts and
// float rows, all-reduce, broadcast. src/dist/ implements it over MPI (only src/dist/ includes
// mpi.h) and trivially for one process, so single-process builds and tests need no MPI.
//
// The grid: W = P x D ranks, P = --expert-parallel. Rank r sits at expert position r % P of the
// expert-parallel group r / P (consecutive ranks share their tokens' experts) and at data
// position r / P of the data-parallel group {r % P, r % P + P, ...} (the replicas of its experts).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

class ProcessGroup {
   public:
    virtual ~ProcessGroup() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // send[q] values go to rank q; recv[q] comes from rank q (size() entries each).
    virtual void alltoall(const int64_t* send, int64_t* recv) = 0;
    // Float rows: send_counts[q] floats to rank q from send (packed in rank order), recv_counts[q]
    // floats from rank q into recv (packed in rank order). Counts must agree pairwise.
    virtual void alltoallv(const float* send, const int64_t* send_counts, float* recv,
                           const int64_t* recv_counts) = 0;
    // Nonblocking all-to-all of float rows, with displacements (in floats) into send and recv:
    // returns a handle for wait(). The buffers must stay untouched until wait() returns (the
    // count arrays are copied). Several may be in flight; each is waited for exactly once.
    virtual int ialltoallv(const float* send, const int64_t* send_counts,
                           const int64_t* send_displs, float* recv, const int64_t* recv_counts,
                           const int64_t* recv_displs) = 0;
    virtual void wait(int handle) = 0;
    // Every rank's n floats, concatenated in rank order into out (counts[q] floats from rank q).
    virtual void allgatherv(const float* send, int64_t n, float* out, const int64_t* counts) = 0;
    // One value per rank, gathered in rank order (out: size() values).
    virtual void allgather(int64_t v, int64_t* out) = 0;
    virtual void allgather_bytes(const void* send, int64_t n, void* out) = 0;  // n per rank
    // Sum over ranks, in place. Same layout and same inputs -> same bits.
    virtual void allreduce_sum(float* x, int64_t n) = 0;
    virtual void allreduce_sum(double* x, int64_t n) = 0;
    virtual void bcast(float* x, int64_t n, int root) = 0;
    virtual void bcast_bytes(void* x, int64_t n, int root) = 0;
    virtual void barrier() = 0;
    // Ends every process of the job with this message (a rank that cannot go on must not leave
    // the others waiting in a collective).
    [[noreturn]] virtual void abort(const std::string& msg) = 0;
};

// A group of one process: every collective is a copy.
std::shared_ptr<ProcessGroup> make_local_group();

// The communicators of one launch. world: every rank (the global batch the router, capacity and
// balancing losses see); expert: the P ranks that split each layer's experts and exchange token
// rows; data: the D ranks holding the same experts (their gradients are summed).
struct ParallelGroups {
    std::shared_ptr<ProcessGroup> world, expert, data;
    bool mpi = false;  // launched under MPI (false: the single-process groups)
    int world_size() const { return world ? world->size() : 1; }
    int world_rank() const { return world ? world->rank() : 0; }
    int ep_size() const { return expert ? expert->size() : 1; }
    int dp_size() const { return data ? data->size() : 1; }
    std::string layout() const;  // "ep2xdp2" (what metrics lines carry)
};

// True when this binary was built with MPI (MOE_WITH_MPI).
bool mpi_available();
// True when the environment says this process was started by mpirun (OpenMPI, PMIx or PMI
// variables), so `moe train` under mpirun joins the job without a flag.
bool launched_by_mpirun();
// Initialises MPI once (when `use_mpi`, else single-process groups) and splits the world into the
// EP x DP grid (expert_parallel 0: every rank in one expert group). Throws moe::Error when
// expert_parallel does not divide the world size, or when MPI is asked for in a build without it.
ParallelGroups init_parallel(bool use_mpi, int expert_parallel);
// MPI_Finalize when init_parallel started MPI (idempotent; tools call it before returning).
void finalize_parallel();

}  // namespace moe
