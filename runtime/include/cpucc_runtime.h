/* cpucc runtime: a thread pool for compiled models (libcpucc_runtime.a).
 *
 * Link: gcc app.c model.o -Lpath/to/lib -lcpucc_runtime -lpthread -ldl -lm
 *
 * parallel_for splits [0, n) statically into `threads` contiguous chunks,
 * runs the first on the calling thread and the others on the pool's
 * workers, and returns when all have finished. Calls from several threads
 * on one pool are serialized (one job at a time per pool); a parallel_for
 * issued from inside a task on the same pool runs inline. */
#ifndef CPUCC_RUNTIME_H
#define CPUCC_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifndef CPUCC_POOL_DEFINED
#define CPUCC_POOL_DEFINED
/* A parallel task: process items [begin, end). */
typedef void (*cpucc_task)(const void *arg, size_t begin, size_t end);
/* Thread-pool callback table. parallel_for splits [0, n) into contiguous
   chunks, calls task(arg, begin, end) for each (possibly on other threads,
   possibly on the calling thread) and returns when all have finished. */
typedef struct cpucc_pool {
    void *ctx;
    size_t threads;
    void (*parallel_for)(void *ctx, size_t n, cpucc_task task, const void *arg);
} cpucc_pool;
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* A pool of `threads` threads, the caller included (threads - 1 workers),
   each pinned to its own physical core (SMT siblings skipped, among the
   CPUs this process may use); the calling thread is pinned to the first.
   0 = CPUCC_NUM_THREADS, else every physical core of one NUMA node.
   CPUCC_CORES (a CPU list, e.g. 0-13), CPUCC_NUMA_NODE and CPUCC_SPIN
   (microseconds a waiting thread spins before it parks) apply. NULL if a setting
   is invalid or threads cannot be started. */
cpucc_pool *cpucc_pool_create(size_t threads);
/* Stops the workers and frees the pool; NULL is ignored. No parallel_for
   may be running on it. */
void cpucc_pool_destroy(cpucc_pool *pool);

/* Asks Linux for AMX tile permission for this process (arch_prctl
   ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). Returns 0 when granted, -1 when
   refused. Models compiled with --fast-math bf16 for an AMX target ask at
   every run themselves (N_run returns 4 when refused); calling this first
   gives the error before any run. */
int cpucc_amx_init(void);

#ifdef __cplusplus
}
#endif

#endif
