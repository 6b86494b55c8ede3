/* A C application embedding a model compiled by cpucc: fills the input,
   runs the model on the calling thread and through a cpucc_pool, checks the
   two runs agree bit for bit, and prints a summary of the output. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv_relu.h"
#include "cpucc_runtime.h"

static size_t numel(int64_t const *shape, int32_t rank) {
    size_t n = 1;
    for (int32_t i = 0; i < rank; i++) n *= (size_t)shape[i];
    return n;
}

int main(void) {
    size_t n_in = numel(conv_relu_input_shapes[0], conv_relu_input_ranks[0]);
    size_t n_out = numel(conv_relu_output_shapes[0], conv_relu_output_ranks[0]);
    float *x = aligned_alloc(64, (n_in * sizeof(float) + 63) / 64 * 64);
    float *y1 = aligned_alloc(64, (n_out * sizeof(float) + 63) / 64 * 64);
    float *y2 = aligned_alloc(64, (n_out * sizeof(float) + 63) / 64 * 64);
    size_t ws_size = conv_relu_workspace_size();
    void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64 + 64);
    if (!x || !y1 || !y2 || !ws) return 2;
    for (size_t i = 0; i < n_in; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;

    const void *inputs[] = {x};
    void *out1[] = {y1};
    void *out2[] = {y2};
    int rc = conv_relu_run(inputs, out1, ws, NULL);
    if (rc != 0) {
        fprintf(stderr, "conv_relu_run failed: %d\n", rc);
        return 1;
    }
    cpucc_pool *pool = cpucc_pool_create(2);
    if (!pool) return 2;
    rc = conv_relu_run(inputs, out2, ws, pool);
    cpucc_pool_destroy(pool);
    if (rc != 0) {
        fprintf(stderr, "conv_relu_run (pool) failed: %d\n", rc);
        return 1;
    }
    if (memcmp(y1, y2, n_out * sizeof(float)) != 0) {
        fprintf(stderr, "pooled and single-threaded runs differ\n");
        return 1;
    }
    double sum = 0;
    float max = y1[0];
    for (size_t i = 0; i < n_out; i++) {
        sum += y1[i];
        if (y1[i] > max) max = y1[i];
    }
    printf("%zu values, sum %.6f, max %.6f\n", n_out, sum, (double)max);
    free(x);
    free(y1);
    free(y2);
    free(ws);
    return 0;
}
