// The group of one process: every collective is a copy (or nothing).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "moe/error.h"
#include "moe/process_group.h"

namespace moe {
namespace {

class LocalGroup : public ProcessGroup {
   public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void alltoall(const int64_t* send, int64_t* recv) override { recv[0] = send[0]; }
    void alltoallv(const float* send, const int64_t* send_counts, float* recv,
                   const int64_t* recv_counts) override {
        MOE_CHECK(send_counts[0] == recv_counts[0], "alltoallv: {} floats sent, {} expected",
                  send_counts[0], recv_counts[0]);
        if (send_counts[0] > 0 && send != recv)
            std::memmove(recv, send, sizeof(float) * (size_t)send_counts[0]);
    }
    int ialltoallv(const float* send, const int64_t* sc, const int64_t* sd, float* recv,
                   const int64_t* rc, const int64_t* rd) override {
        MOE_CHECK(sc[0] == rc[0], "ialltoallv: {} floats sent, {} expected", sc[0], rc[0]);
        if (sc[0] > 0 && send + sd[0] != recv + rd[0])
            std::memmove(recv + rd[0], send + sd[0], sizeof(float) * (size_t)sc[0]);
        return 0;
    }
    void wait(int) override {}
    void allgatherv(const float* send, int64_t n, float* out, const int64_t* counts) override {
        MOE_CHECK(counts[0] == n, "allgatherv: {} floats given, {} expected", n, counts[0]);
        if (n > 0 && send != out) std::memmove(out, send, sizeof(float) * (size_t)n);
    }
    void allgather(int64_t v, int64_t* out) override { out[0] = v; }
    void allgather_bytes(const void* send, int64_t n, void* out) override {
        if (n > 0 && send != out) std::memmove(out, send, (size_t)n);
    }
    void allreduce_sum(float*, int64_t) override {}
    void allreduce_sum(double*, int64_t) override {}
    void bcast(float*, int64_t, int) override {}
    void bcast_bytes(void*, int64_t, int) override {}
    void barrier() override {}
    [[noreturn]] void abort(const std::string& msg) override {
        std::fprintf(stderr, "moe: error: %s\n", msg.c_str());
        std::exit(1);
    }
};

}  // namespace

std::shared_ptr<ProcessGroup> make_local_group() { return std::make_shared<LocalGroup>(); }

}  // namespace moe
