// ProcessGroup over MPI (OpenMPI from Debian). The only file that includes mpi.h.
// Counts travel as int (MPI's count type): a message over 2^31 floats is refused with a message
// rather than truncated.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <vector>

#include "dist/mpi_group.h"
#include "moe/error.h"

namespace moe {
namespace {

int as_count(int64_t n, const char* what) {
    if (n < 0 || n > INT_MAX)
        fail("MPI {}: {} values in one message (MPI counts stop at 2^31 - 1); use more ranks or a "
             "smaller batch",
             what, n);
    return (int)n;
}

class MpiGroup : public ProcessGroup {
   public:
    explicit MpiGroup(MPI_Comm c) : comm_(c) {
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }

    void alltoall(const int64_t* send, int64_t* recv) override {
        MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, comm_);
    }
    void alltoallv(const float* send, const int64_t* send_counts, float* recv,
                   const int64_t* recv_counts) override {
        std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
        int64_t so = 0, ro = 0;
        for (int q = 0; q < size_; q++) {
            sc[q] = as_count(send_counts[q], "alltoallv");
            rc[q] = as_count(recv_counts[q], "alltoallv");
            sd[q] = as_count(so, "alltoallv");
            rd[q] = as_count(ro, "alltoallv");
            so += sc[q];
            ro += rc[q];
        }
        MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT,
                      comm_);
    }
    // The count arrays live with the request until it completes (MPI reads them until then).
    int ialltoallv(const float* send, const int64_t* scount, const int64_t* sdispl, float* recv,
                   const int64_t* rcount, const int64_t* rdispl) override {
        Pending p;
        p.a.resize(4 * (size_t)size_);
        int* sc = p.a.data();
        int *sd = sc + size_, *rc = sd + size_, *rd = rc + size_;
        for (int q = 0; q < size_; q++) {
            sc[q] = as_count(scount[q], "ialltoallv");
            sd[q] = as_count(sdispl[q], "ialltoallv");
            rc[q] = as_count(rcount[q], "ialltoallv");
            rd[q] = as_count(rdispl[q], "ialltoallv");
        }
        int h = 0;
        while (h < (int)pending_.size() && pending_[h].live) h++;
        if (h == (int)pending_.size()) pending_.emplace_back();
        pending_[h] = std::move(p);
        Pending& q = pending_[h];
        q.live = true;
        MPI_Ialltoallv(send, sc, sd, MPI_FLOAT, recv, rc, rd, MPI_FLOAT, comm_, &q.req);
        return h;
    }
    void wait(int h) override {
        MOE_CHECK(h >= 0 && h < (int)pending_.size() && pending_[h].live,
                  "wait: no request {} in flight", h);
        MPI_Wait(&pending_[h].req, MPI_STATUS_IGNORE);
        pending_[h].live = false;
    }
    void allgatherv(const float* send, int64_t n, float* out, const int64_t* counts) override {
        std::vector<int> rc(size_), rd(size_);
        int64_t o = 0;
        for (int q = 0; q < size_; q++) {
            rc[q] = as_count(counts[q], "allgatherv");
            rd[q] = as_count(o, "allgatherv");
            o += rc[q];
        }
        MOE_CHECK(counts[rank_] == n, "allgatherv: {} floats given, {} expected", n, counts[rank_]);
        MPI_Allgatherv(send, as_count(n, "allgatherv"), MPI_FLOAT, out, rc.data(), rd.data(),
                       MPI_FLOAT, comm_);
    }
    void allgather(int64_t v, int64_t* out) override {
        MPI_Allgather(&v, 1, MPI_INT64_T, out, 1, MPI_INT64_T, comm_);
    }
    void allgather_bytes(const void* send, int64_t n, void* out) override {
        MPI_Allgather(send, as_count(n, "allgather"), MPI_BYTE, out, (int)n, MPI_BYTE, comm_);
    }
    // MPI_Allreduce in chunks (counts are int). OpenMPI picks its algorithm from the message size
    // and the communicator size: a fixed layout gives a fixed summation order, so the same bits.
    void allreduce_sum(float* x, int64_t n) override {
        for (int64_t o = 0; o < n; o += kChunk)
            MPI_Allreduce(MPI_IN_PLACE, x + o, (int)std::min<int64_t>(kChunk, n - o), MPI_FLOAT,
                          MPI_SUM, comm_);
    }
    void allreduce_sum(double* x, int64_t n) override {
        for (int64_t o = 0; o < n; o += kChunk)
            MPI_Allreduce(MPI_IN_PLACE, x + o, (int)std::min<int64_t>(kChunk, n - o), MPI_DOUBLE,
                          MPI_SUM, comm_);
    }
    void bcast(float* x, int64_t n, int root) override {
        for (int64_t o = 0; o < n; o += kChunk)
            MPI_Bcast(x + o, (int)std::min<int64_t>(kChunk, n - o), MPI_FLOAT, root, comm_);
    }
    void bcast_bytes(void* x, int64_t n, int root) override {
        char* p = static_cast<char*>(x);
        for (int64_t o = 0; o < n; o += kChunk)
            MPI_Bcast(p + o, (int)std::min<int64_t>(kChunk, n - o), MPI_BYTE, root, comm_);
    }
    void barrier() override { MPI_Barrier(comm_); }
    [[noreturn]] void abort(const std::string& msg) override { mpi_abort(msg); }

   private:
    static constexpr int64_t kChunk = 1 << 28;
    struct Pending {
        MPI_Request req = MPI_REQUEST_NULL;
        std::vector<int> a;  // counts and displacements, alive until the wait
        bool live = false;
    };
    std::vector<Pending> pending_;  // slots reused; a handle is an index (std::vector<int>
                                    // buffers do not move when the vector of slots grows)
    MPI_Comm comm_;
    int rank_ = 0, size_ = 1;
};

bool g_started = false;

}  // namespace

[[noreturn]] void mpi_abort(const std::string& msg) {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    std::fprintf(stderr, "moe: error: rank %d: %s\n", r, msg.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

ParallelGroups mpi_parallel_groups(int expert_parallel) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
        g_started = true;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (expert_parallel == 0) expert_parallel = size;  // one expert group of every rank
    if (expert_parallel < 1 || size % expert_parallel != 0)
        fail("--expert-parallel {}: must divide the number of ranks {} (ranks = expert-parallel x "
             "data-parallel)",
             expert_parallel, size);
    MPI_Comm ep, dp;
    MPI_Comm_split(MPI_COMM_WORLD, rank / expert_parallel, rank, &ep);
    MPI_Comm_split(MPI_COMM_WORLD, rank % expert_parallel, rank, &dp);
    ParallelGroups g;
    g.world = std::make_shared<MpiGroup>(MPI_COMM_WORLD);
    g.expert = std::make_shared<MpiGroup>(ep);
    g.data = std::make_shared<MpiGroup>(dp);
    g.mpi = true;
    return g;
}

void mpi_finalize() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (g_started && !fin) MPI_Finalize();
}

}  // namespace moe
