/* Exact executed-instruction counter for qemu-user, as a TCG plugin: every
   translation block, each time it runs, adds its guest instruction count
   to the total and to the address range it lies in. Arguments:
     ranges=PATH  "start end" (hex, end exclusive) per line, e.g. from nm
     out=PATH     written at exit: "total N", then "range I N" per range.
   Debian ships no qemu-plugin.h, so the few entry points used are declared
   here; their C ABI is plugin API version 1 (qemu 7.x, still accepted by
   later releases). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*vcpu_udata_cb)(unsigned int, void *);
typedef void (*udata_cb)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, vcpu_udata_cb,
                                          enum qemu_plugin_cb_flags, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb, void *);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

struct range { uint64_t lo, hi, count; };
static struct range *ranges;
static size_t nranges;
static uint64_t total;
static const char *out_path;

/* What one translated block adds when it runs. */
struct block { uint64_t insns; uint64_t *bucket; };

static void on_exec(unsigned int vcpu, void *udata) {
    (void)vcpu;
    struct block *b = udata;
    __atomic_fetch_add(&total, b->insns, __ATOMIC_RELAXED);
    if (b->bucket) __atomic_fetch_add(b->bucket, b->insns, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    struct block *b = malloc(sizeof *b);
    if (!b) abort();
    b->insns = qemu_plugin_tb_n_insns(tb);
    b->bucket = NULL;
    uint64_t pc = qemu_plugin_tb_vaddr(tb);
    for (size_t i = 0; i < nranges; i++) {
        if (pc >= ranges[i].lo && pc < ranges[i].hi) {
            b->bucket = &ranges[i].count;
            break;
        }
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void at_end(qemu_plugin_id_t id, void *udata) {
    (void)id;
    (void)udata;
    FILE *f = out_path ? fopen(out_path, "w") : stderr;
    if (!f) return;
    fprintf(f, "total %llu\n", (unsigned long long)total);
    for (size_t i = 0; i < nranges; i++)
        fprintf(f, "range %zu %llu\n", i, (unsigned long long)ranges[i].count);
    if (f != stderr) fclose(f);
}

static int load_ranges(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long lo, hi;
    size_t cap = 0;
    while (fscanf(f, "%llx %llx", &lo, &hi) == 2) {
        if (nranges == cap) {
            cap = cap ? 2 * cap : 64;
            ranges = realloc(ranges, cap * sizeof *ranges);
            if (!ranges) abort();
        }
        ranges[nranges++] = (struct range){lo, hi, 0};
    }
    fclose(f);
    return 0;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "ranges=", 7) == 0) {
            if (load_ranges(argv[i] + 7) != 0) return -1;
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = argv[i] + 4;
        } else {
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_end, NULL);
    return 0;
}
