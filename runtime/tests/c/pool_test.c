/* The runtime's C API from C: create/destroy, parallel_for coverage for
   many n and thread counts (n = 0 and n < threads included), NULL destroy.
   Prints "pool_test ok" and exits 0 on success. */
#include <stdio.h>
#include <stdlib.h>

#include "cpucc_runtime.h"

struct counts {
    int *hits;
    size_t n;
    int bad;
    int calls;
};

static void mark(const void *arg, size_t begin, size_t end) {
    struct counts *c = (struct counts *)arg;
    if (begin >= end || end > c->n) __atomic_store_n(&c->bad, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->calls, 1, __ATOMIC_RELAXED);
    for (size_t i = begin; i < end && i < c->n; i++) __atomic_add_fetch(&c->hits[i], 1, __ATOMIC_RELAXED);
}

int main(void) {
    static const size_t threads[] = {0, 1, 2, 3, 8};
    static const size_t ns[] = {0, 1, 2, 5, 7, 64, 1000, 4099};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        cpucc_pool *pool = cpucc_pool_create(threads[t]);
        if (!pool || pool->threads < 1 || (threads[t] && pool->threads != threads[t])) {
            printf("pool_test: bad pool for %zu threads\n", threads[t]);
            return 1;
        }
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            struct counts c = {calloc(ns[k] + 1, sizeof(int)), ns[k], 0, 0};
            pool->parallel_for(pool->ctx, ns[k], mark, &c);
            size_t want_calls = ns[k] < pool->threads ? ns[k] : pool->threads;
            if (c.bad || (size_t)c.calls != want_calls) {
                printf("pool_test: %zu threads, n=%zu: %d calls, bad=%d\n", pool->threads, ns[k],
                       c.calls, c.bad);
                return 1;
            }
            for (size_t i = 0; i < ns[k]; i++)
                if (c.hits[i] != 1) {
                    printf("pool_test: index %zu of %zu hit %d times\n", i, ns[k], c.hits[i]);
                    return 1;
                }
            free(c.hits);
        }
        cpucc_pool_destroy(pool);
    }
    if (cpucc_pool_create((size_t)-1) != NULL) {
        printf("pool_test: an absurd thread count was accepted\n");
        return 1;
    }
    cpucc_pool_destroy(NULL);
    printf("pool_test ok\n");
    return 0;
}
