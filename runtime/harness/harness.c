/* cpucc harness: runs one compiled model on .npy inputs and writes its
 * outputs as .npy files. Built per model:
 *
 *   cc -O2 -std=c11 -DCPUCC_NAME=N -include N.h harness.c N.o -o N_run -lm
 *   (or -DCPUCC_HEADER='"N.h"' instead of -include)
 *   add -DCPUCC_USE_POOL and link libcpucc_runtime.a (-lpthread -ldl) to run
 *   with a cpucc_pool (CPUCC_THREADS=k threads, default one per core);
 *   otherwise N_run gets a NULL pool and runs on the calling thread.
 *
 * Usage: N_run [-o OUTDIR] [-n ITERS] (FILE.npy | -i NAME FILE.npy)...
 *   Plain files are the inputs in header order; -i binds one by name.
 *   Writes OUTDIR/output_<i>.npy (default OUTDIR ".") and prints one line
 *   per output: "output <i> dtype=<onnx code> <name>". With -n it runs
 *   ITERS times and prints "time_ms min=<ms> median=<ms> iters=<n>".
 *
 * .npy: versions 1-3, little-endian, C order. bf16 (code 16) travels as
 * f32 .npy files (numpy has no bf16): inputs are rounded to nearest even,
 * outputs widened exactly. Any failure prints one line "cpucc harness: ..."
 * on stderr and exits 1. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef CPUCC_HEADER
#include CPUCC_HEADER
#endif
#ifdef CPUCC_USE_POOL
#include "cpucc_runtime.h"
#endif

#ifndef CPUCC_NAME
#error "compile with -DCPUCC_NAME=<model name>"
#endif
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define SYM(s) CAT(CPUCC_NAME, s)
#define STR_(a) #a
#define STR(a) STR_(a)

#define NUM_INPUTS SYM(_NUM_INPUTS)
#define NUM_OUTPUTS SYM(_NUM_OUTPUTS)

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cpucc harness: %s: ", STR(CPUCC_NAME));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

struct dtype {
    int32_t code;
    const char *name;
    size_t size;    /* in memory */
    const char *npy; /* descr without byte order */
};

static const struct dtype DTYPES[] = {
    {1, "f32", 4, "f4"},   {2, "u8", 1, "u1"},    {3, "i8", 1, "i1"},
    {4, "u16", 2, "u2"},   {5, "i16", 2, "i2"},   {6, "i32", 4, "i4"},
    {7, "i64", 8, "i8"},   {9, "bool", 1, "b1"},  {10, "f16", 2, "f2"},
    {11, "f64", 8, "f8"},  {12, "u32", 4, "u4"},  {13, "u64", 8, "u8"},
    {16, "bf16", 2, "f4"},
};

static const struct dtype *dtype_of(int32_t code) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].code == code) return &DTYPES[i];
    fail("dtype code %d is not in the ABI", (int)code);
    return NULL;
}

/* "f32[2,3]" into buf. */
static const char *describe(const struct dtype *dt, int rank, const int64_t *shape,
                            char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "%s[", dt->name);
    for (int d = 0; d < rank && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

static size_t elements(int rank, const int64_t *shape) {
    size_t n = 1;
    for (int d = 0; d < rank; d++) n *= (size_t)shape[d];
    return n;
}

static void *alloc64(size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) fail("out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Value of key `key` in a .npy header dict, or NULL. */
static const char *dict_value(const char *hdr, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p = strchr(p + strlen(pat), ':');
    if (!p) return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

/* Reads `path` as the input with the given dtype and shape into a fresh
   64-byte-aligned buffer. */
static void *read_npy(const char *path, const char *what, const struct dtype *dt, int rank,
                      const int64_t *shape) {
    FILE *f = fopen(path, "rb");
    if (!f) fail("%s: cannot open %s: %s", what, path, strerror(errno));
    unsigned char pre[10];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        fail("%s: %s is not a .npy file", what, path);
    size_t hlen;
    if (pre[6] == 1) {
        if (fread(pre + 8, 1, 2, f) != 2) fail("%s: %s: truncated header", what, path);
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        unsigned char l[4];
        if (fread(l, 1, 4, f) != 4) fail("%s: %s: truncated header", what, path);
        hlen = l[0] | (size_t)l[1] << 8 | (size_t)l[2] << 16 | (size_t)l[3] << 24;
    } else {
        fail("%s: %s: .npy version %d is not supported", what, path, pre[6]);
    }
    char *hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) fail("%s: %s: truncated header", what, path);
    hdr[hlen] = 0;

    const char *descr = dict_value(hdr, "descr");
    const char *order = dict_value(hdr, "fortran_order");
    const char *shp = dict_value(hdr, "shape");
    if (!descr || !order || !shp || (*descr != '\'' && *descr != '"') || *shp != '(')
        fail("%s: %s: malformed .npy header", what, path);
    if (strncmp(order, "False", 5) != 0)
        fail("%s: %s: Fortran-ordered .npy files are not supported", what, path);
    char d[16] = {0};
    size_t dl = 0;
    for (const char *p = descr + 1; *p && *p != *descr && dl < sizeof d - 1; p++) d[dl++] = *p;
    /* One-byte types are '|'; wider ones must be little-endian. */
    if (dl < 2 || !(d[0] == '<' || d[0] == '|' || d[0] == '='))
        fail("%s: %s: big-endian or unknown dtype '%s'", what, path, d);
    const char *want = dt->npy;
    int ok = strcmp(d + 1, want) == 0 || (dt->code == 9 && strcmp(d + 1, "?") == 0);
    int64_t got_shape[64];
    int got_rank = 0;
    for (const char *p = shp + 1; *p && *p != ')';) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || got_rank == 64) fail("%s: %s: malformed shape in .npy header", what, path);
        got_shape[got_rank++] = v;
        p = end;
        while (*p == 'L') p++;
    }
    int same = ok && got_rank == rank;
    for (int k = 0; same && k < rank; k++) same = got_shape[k] == shape[k];
    if (!same) {
        char want_s[300], got_s[300];
        const char *gotd = d + 1;
        const struct dtype *g = NULL;
        for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
            if (strcmp(DTYPES[i].npy, gotd) == 0 && DTYPES[i].code != 16) g = &DTYPES[i];
        if (g)
            describe(g, got_rank, got_shape, got_s, sizeof got_s);
        else
            snprintf(got_s, sizeof got_s, "dtype '%s' of rank %d", d, got_rank);
        describe(dt, rank, shape, want_s, sizeof want_s);
        fail("%s: %s holds %s, the model expects %s%s", what, path, got_s, want_s,
             dt->code == 16 ? " (bf16 inputs are given as f32 .npy)" : "");
    }
    free(hdr);

    size_t n = elements(rank, shape);
    size_t file_elem = dt->code == 16 ? 4 : dt->size;
    void *buf = alloc64(n * dt->size);
    void *raw = dt->code == 16 ? alloc64(n * 4) : buf;
    if (fread(raw, file_elem, n, f) != n) fail("%s: %s: data shorter than its shape", what, path);
    if (fgetc(f) != EOF) fail("%s: %s: data longer than its shape", what, path);
    fclose(f);
    if (dt->code == 16) {
        const float *src = raw;
        uint16_t *dst = buf;
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
        free(raw);
    }
    if (dt->code == 9) {
        unsigned char *b = buf;
        for (size_t i = 0; i < n; i++) b[i] = b[i] != 0;
    }
    return buf;
}

static void write_npy(const char *path, const struct dtype *dt, int rank, const int64_t *shape,
                      const void *data) {
    char dict[512];
    size_t k = (size_t)snprintf(dict, sizeof dict, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                                dt->size == 1 ? '|' : '<', dt->npy);
    for (int d = 0; d < rank; d++)
        k += (size_t)snprintf(dict + k, sizeof dict - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    k += (size_t)snprintf(dict + k, sizeof dict - k, rank == 1 ? ",), }" : "), }");
    /* Pad with spaces so the data starts at a multiple of 64, newline last. */
    size_t total = (10 + k + 1 + 63) / 64 * 64;
    size_t hlen = total - 10;
    FILE *f = fopen(path, "wb");
    if (!f) fail("cannot create %s: %s", path, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, k, f);
    for (size_t i = k; i + 1 < hlen; i++) fputc(' ', f);
    fputc('\n', f);
    size_t n = elements(rank, shape);
    if (dt->code == 16) {
        const uint16_t *src = data;
        for (size_t i = 0; i < n; i++) {
            float v = bf16_to_f32(src[i]);
            fwrite(&v, 4, 1, f);
        }
    } else {
        fwrite(data, dt->size, n, f);
    }
    if (fclose(f) != 0) fail("writing %s failed: %s", path, strerror(errno));
}

static double now_ms(void) {
    /* C11's clock (wall time): the header may be force-included before
       any feature-test macro could ask for POSIX's CLOCK_MONOTONIC. */
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char *run_error(int code) {
    switch (code) {
    case 1: return "a NULL input or output pointer";
    case 2: return "workspace NULL while the model needs one";
    case 3: return "runtime data error (an index out of range, or a run-time input the code cannot handle)";
    case 4: return "the kernel refused AMX tile permission (a --fast-math bf16 model; arch_prctl ARCH_REQ_XCOMP_PERM)";
    default: return "unknown error code";
    }
}

int main(int argc, char **argv) {
    const char *outdir = ".";
    long iters = 0;
    const char *files[NUM_INPUTS > 0 ? NUM_INPUTS : 1] = {0};
    int positional = 0;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-o") == 0 && a + 1 < argc) {
            outdir = argv[++a];
        } else if (strcmp(argv[a], "-n") == 0 && a + 1 < argc) {
            char *end;
            iters = strtol(argv[++a], &end, 10);
            if (*end || iters < 1) fail("-n needs a positive count, got '%s'", argv[a]);
        } else if (strcmp(argv[a], "-i") == 0 && a + 2 < argc) {
            const char *name = argv[++a];
            int found = -1;
            for (int i = 0; i < NUM_INPUTS; i++)
                if (strcmp(SYM(_input_names)[i], name) == 0) found = i;
            if (found < 0) fail("the model has no input named '%s'", name);
            if (files[found]) fail("input '%s' is given twice", name);
            files[found] = argv[++a];
        } else if (argv[a][0] == '-' && argv[a][1]) {
            fail("usage: %s [-o OUTDIR] [-n ITERS] (FILE.npy | -i NAME FILE.npy)...", argv[0]);
        } else {
            while (positional < NUM_INPUTS && files[positional]) positional++;
            if (positional >= NUM_INPUTS)
                fail("too many inputs: the model takes %d", NUM_INPUTS);
            files[positional++] = argv[a];
        }
    }

    const void *inputs[NUM_INPUTS > 0 ? NUM_INPUTS : 1];
    for (int i = 0; i < NUM_INPUTS; i++) {
        char what[300];
        snprintf(what, sizeof what, "input %d '%s'", i, SYM(_input_names)[i]);
        if (!files[i]) fail("%s is not given (%d inputs needed)", what, NUM_INPUTS);
        inputs[i] = read_npy(files[i], what, dtype_of(SYM(_input_dtypes)[i]),
                             SYM(_input_ranks)[i], SYM(_input_shapes)[i]);
    }
    void *outputs[NUM_OUTPUTS > 0 ? NUM_OUTPUTS : 1];
    for (int i = 0; i < NUM_OUTPUTS; i++) {
        const struct dtype *dt = dtype_of(SYM(_output_dtypes)[i]);
        outputs[i] = alloc64(elements(SYM(_output_ranks)[i], SYM(_output_shapes)[i]) * dt->size);
    }
    void *workspace = alloc64(SYM(_workspace_size)());

    const cpucc_pool *pool = NULL;
#ifdef CPUCC_USE_POOL
    const char *env = getenv("CPUCC_THREADS");
    cpucc_pool *own = cpucc_pool_create(env ? (size_t)strtoul(env, NULL, 10) : 0);
    if (!own) fail("cannot start the thread pool");
    pool = own;
#endif

    long runs = iters > 0 ? iters : 1;
    double *times = malloc(sizeof(double) * (size_t)runs);
    if (!times) fail("out of memory");
    for (long r = 0; r < runs; r++) {
        double t0 = now_ms();
        int rc = SYM(_run)(inputs, outputs, workspace, pool);
        times[r] = now_ms() - t0;
        if (rc != 0) fail("%s_run returned %d: %s", STR(CPUCC_NAME), rc, run_error(rc));
    }
#ifdef CPUCC_USE_POOL
    cpucc_pool_destroy(own);
#endif

    for (int i = 0; i < NUM_OUTPUTS; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/output_%d.npy", outdir, i);
        write_npy(path, dtype_of(SYM(_output_dtypes)[i]), SYM(_output_ranks)[i],
                  SYM(_output_shapes)[i], outputs[i]);
        printf("output %d dtype=%d %s\n", i, (int)SYM(_output_dtypes)[i], SYM(_output_names)[i]);
    }
    if (iters > 0) {
        qsort(times, (size_t)runs, sizeof(double), cmp_double);
        printf("time_ms min=%.4f median=%.4f iters=%ld\n", times[0], times[runs / 2], runs);
    }
    return 0;
}
