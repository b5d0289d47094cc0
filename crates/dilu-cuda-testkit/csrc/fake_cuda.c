/*
 * A software CUDA driver for tests: implements a subset of the CUDA driver API
 * (see cuda_subset.h) against a simulated device. Built as libcuda.so.1 by the
 * dilu-cuda-testkit crate's build script.
 *
 * Configuration (environment, read once on the first call):
 *   DILU_FAKE_CUDA_DEVICES      number of devices, 0..8 (default 1)
 *   DILU_FAKE_CUDA_UUID         device 0's UUID, GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
 *   DILU_FAKE_CUDA_SMS          streaming multiprocessors per device (default 132)
 *   DILU_FAKE_CUDA_MEM_BYTES    memory per device (default 80 GiB)
 *   DILU_FAKE_CUDA_NS_PER_WAVE  ns one full wave (SMs x 2048 threads) takes (default 1000)
 *   DILU_FAKE_CUDA_STATE        file holding the devices' shared state (busy-until, bytes used)
 *   DILU_FAKE_CUDA_LOG          file every exported call appends one line to
 *
 * Invalid configuration makes every call fail (cuInit with CUDA_ERROR_NO_DEVICE
 * or CUDA_ERROR_OPERATING_SYSTEM) after one message on stderr.
 *
 * Internal rule: exported functions never call other exported functions (an
 * LD_PRELOAD interposer could intercept those calls); they share static helpers.
 */
#define _GNU_SOURCE
#include "cuda_subset.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#define MAX_DEVICES 8
#define THREADS_PER_SM 2048ull
#define MAX_THREADS_PER_BLOCK 1024ull
#define VMM_GRANULARITY (2ull << 20)
#define PITCH_ALIGN 512ull
#define PTR_ALIGN 256ull
#define PTR_BASE 0x7f0000000000ull
#define MAX_MEM_BYTES (1ull << 50)
#define DRIVER_VERSION 12040
#define KERNEL_NAME_MAX 128

#define STATE_MAGIC 0x44494c5546414b45ull /* "DILUFAKE" */
#define STATE_VERSION 1ull

#define CTX_MAGIC 0xc0417e47u
#define MOD_MAGIC 0x30d0e1e5u
#define FUNC_MAGIC 0xf0c7104eu
#define STREAM_MAGIC 0x57ae4a11u
#define GRAPH_MAGIC 0x6a4a9401u
#define NODE_MAGIC 0x40dea0d1u
#define EXEC_MAGIC 0xe7ecc0deu
#define POOL_MAGIC 0x9001faceu

/* ------------------------------------------------------------------------- */
/* Shared device state                                                       */
/* ------------------------------------------------------------------------- */

struct dev_state {
    uint64_t busy_until_ns;
    uint64_t bytes_used;
    uint64_t reserved[6];
};

struct state_file {
    uint64_t magic;
    uint64_t version;
    uint64_t reserved[6];
    struct dev_state dev[MAX_DEVICES];
};

static struct state_file g_local_state;
static struct state_file *g_state = &g_local_state;

struct config {
    int ndev;
    uint64_t sms;
    uint64_t mem_total;
    uint64_t ns_per_wave;
    unsigned char uuid[MAX_DEVICES][16];
};

static struct config g_cfg;
static CUresult g_setup_rc = CUDA_SUCCESS;
static pthread_once_t g_setup_once = PTHREAD_ONCE_INIT;
static int g_log_fd = -1;
static int g_initialized;
static pid_t g_owner_pid;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------------- */
/* Handles                                                                   */
/* ------------------------------------------------------------------------- */

struct CUctx_st {
    uint32_t magic;
    int device;
    int primary;
};

struct CUfunc_st {
    uint32_t magic;
    struct CUfunc_st *next;
    char name[KERNEL_NAME_MAX];
};

struct CUmod_st {
    uint32_t magic;
    struct CUfunc_st *funcs;
};

struct CUstream_st {
    uint32_t magic;
    int device;
    uint64_t tail;
};

struct CUmemPoolHandle_st {
    uint32_t magic;
    int device;
};

struct CUgraphNode_st {
    uint32_t magic;
    CUgraphNodeType type;
    struct CUgraph_st *graph;
    CUDA_KERNEL_NODE_PARAMS_v2 params;
};

struct CUgraph_st {
    uint32_t magic;
    struct CUgraphNode_st **nodes;
    size_t len;
    size_t cap;
};

struct exec_kernel {
    uint64_t blocks;
    uint64_t threads;
    uint64_t duration_ns;
};

struct CUgraphExec_st {
    uint32_t magic;
    size_t len;
    struct exec_kernel *kernels;
};

static struct CUctx_st g_primary[MAX_DEVICES];
static int g_primary_refs[MAX_DEVICES];
static struct CUmemPoolHandle_st g_pools[MAX_DEVICES];
static __thread struct CUctx_st *t_current;

/* Tails of the NULL stream, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD. */
static uint64_t g_special_tail[3];
/* The latest end of any kernel this process launched (cuCtxSynchronize). */
static uint64_t g_max_tail;

/* ------------------------------------------------------------------------- */
/* Allocation tables: append-only sorted arrays (keys grow monotonically)     */
/* ------------------------------------------------------------------------- */

enum alloc_kind { KIND_DEVICE, KIND_PITCH, KIND_MANAGED, KIND_ASYNC, KIND_POOL, KIND_VMM };

struct alloc_entry {
    uint64_t key;
    uint64_t size;
    int device;     /* -1: not counted toward any device */
    int kind;
    int location;   /* cuMemCreate location type */
    int live;
};

struct alloc_table {
    struct alloc_entry *v;
    size_t len;
    size_t cap;
    size_t dead;
};

static struct alloc_table g_ptrs;
static struct alloc_table g_handles;
static uint64_t g_next_ptr = PTR_BASE;
static uint64_t g_next_handle = 1;

/* Requires g_mu. Returns false when out of host memory. */
static bool table_append(struct alloc_table *t, struct alloc_entry e) {
    if (t->len == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct alloc_entry *v = realloc(t->v, cap * sizeof(*v));
        if (v == NULL) {
            return false;
        }
        t->v = v;
        t->cap = cap;
    }
    t->v[t->len++] = e;
    return true;
}

/* Requires g_mu. */
static struct alloc_entry *table_find(struct alloc_table *t, uint64_t key) {
    size_t lo = 0, hi = t->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->v[mid].key < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < t->len && t->v[lo].key == key && t->v[lo].live) {
        return &t->v[lo];
    }
    return NULL;
}

/* Requires g_mu. */
static void table_kill(struct alloc_table *t, struct alloc_entry *e) {
    e->live = 0;
    t->dead++;
    if (t->dead > 64 && t->dead * 2 > t->len) {
        size_t w = 0;
        for (size_t r = 0; r < t->len; r++) {
            if (t->v[r].live) {
                t->v[w++] = t->v[r];
            }
        }
        t->len = w;
        t->dead = 0;
    }
}

/* ------------------------------------------------------------------------- */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t deadline) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline / 1000000000ull);
    ts.tv_nsec = (long)(deadline % 1000000000ull);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static void atomic_max_u64(uint64_t *p, uint64_t v) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
    }
}

static uint64_t round_up(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

/* Appends one line to the log with a single write(2). */
__attribute__((format(printf, 3, 4))) static void log_call(const char *fn, CUresult rc, const char *fmt, ...) {
    if (g_log_fd < 0) {
        return;
    }
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "t=%" PRIu64 " pid=%ld tid=%ld fn=%s", now_ns(), (long)getpid(),
                     (long)syscall(SYS_gettid), fn);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        return;
    }
    size_t len = (size_t)n;
    if (fmt != NULL) {
        buf[len++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(buf + len, sizeof(buf) - len, fmt, ap);
        va_end(ap);
        if (m < 0) {
            return;
        }
        len += (size_t)m;
        if (len >= sizeof(buf)) {
            len = sizeof(buf) - 1;
        }
    }
    int m = snprintf(buf + len, sizeof(buf) - len, " rc=%d\n", (int)rc);
    if (m < 0 || len + (size_t)m >= sizeof(buf)) {
        /* Truncated: keep the line parseable and terminated. */
        static const char tail[] = " rc=?\n";
        len = sizeof(buf) - sizeof(tail);
        memcpy(buf + len, tail, sizeof(tail) - 1);
        len += sizeof(tail) - 1;
    } else {
        len += (size_t)m;
    }
    ssize_t w = write(g_log_fd, buf, len);
    (void)w;
}

#define LOG_PLAIN(fn, rc)                                                                                    \
    do {                                                                                                     \
        if (g_log_fd >= 0) log_call((fn), (rc), NULL);                                                       \
    } while (0)
#define LOG(fn, rc, ...)                                                                                     \
    do {                                                                                                     \
        if (g_log_fd >= 0) log_call((fn), (rc), __VA_ARGS__);                                                \
    } while (0)

/* ------------------------------------------------------------------------- */
/* Setup                                                                     */
/* ------------------------------------------------------------------------- */

static bool env_u64(const char *name, uint64_t def, uint64_t min, uint64_t max, uint64_t *out) {
    const char *s = getenv(name);
    if (s == NULL || *s == '\0') {
        *out = def;
        return true;
    }
    const char *p = s;
    while (*p == ' ') {
        p++;
    }
    if (*p < '0' || *p > '9') {
        fprintf(stderr, "fake_cuda: %s=%s is not a non-negative integer\n", name, s);
        return false;
    }
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno != 0 || end == p || *end != '\0') {
        fprintf(stderr, "fake_cuda: %s=%s is not a non-negative integer\n", name, s);
        return false;
    }
    if (v < min || v > max) {
        fprintf(stderr, "fake_cuda: %s=%s is out of range [%" PRIu64 ", %" PRIu64 "]\n", name, s, min, max);
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. */
static bool parse_uuid(const char *s, unsigned char out[16]) {
    if (strncmp(s, "GPU-", 4) != 0 || strlen(s) != 40) {
        return false;
    }
    const char *p = s + 4;
    int byte = 0;
    for (int i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') return false;
            i++;
            continue;
        }
        int hi = hex_digit(p[i]), lo = hex_digit(p[i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[byte++] = (unsigned char)(hi * 16 + lo);
        i += 2;
    }
    return byte == 16;
}

static bool map_state(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        fprintf(stderr, "fake_cuda: cannot open DILU_FAKE_CUDA_STATE=%s: %s\n", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fprintf(stderr, "fake_cuda: cannot stat %s: %s\n", path, strerror(errno));
        close(fd);
        return false;
    }
    if ((size_t)st.st_size < sizeof(struct state_file) && ftruncate(fd, sizeof(struct state_file)) != 0) {
        fprintf(stderr, "fake_cuda: cannot size %s: %s\n", path, strerror(errno));
        close(fd);
        return false;
    }
    void *m = mmap(NULL, sizeof(struct state_file), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        fprintf(stderr, "fake_cuda: cannot map %s: %s\n", path, strerror(errno));
        return false;
    }
    struct state_file *sf = m;
    uint64_t expected = 0;
    if (!__atomic_compare_exchange_n(&sf->magic, &expected, STATE_MAGIC, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE) &&
        expected != STATE_MAGIC) {
        fprintf(stderr, "fake_cuda: %s is not a fake CUDA state file (magic %#" PRIx64 ")\n", path, expected);
        munmap(m, sizeof(struct state_file));
        return false;
    }
    uint64_t version = 0;
    if (!__atomic_compare_exchange_n(&sf->version, &version, STATE_VERSION, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE) &&
        version != STATE_VERSION) {
        fprintf(stderr, "fake_cuda: %s has state version %" PRIu64 ", expected %llu\n", path, version,
                STATE_VERSION);
        munmap(m, sizeof(struct state_file));
        return false;
    }
    g_state = sf;
    return true;
}

static void setup(void) {
    uint64_t ndev = 0;
    if (!env_u64("DILU_FAKE_CUDA_DEVICES", 1, 0, MAX_DEVICES, &ndev) ||
        !env_u64("DILU_FAKE_CUDA_SMS", 132, 1, 1u << 20, &g_cfg.sms) ||
        !env_u64("DILU_FAKE_CUDA_MEM_BYTES", 80ull << 30, 1, MAX_MEM_BYTES, &g_cfg.mem_total) ||
        !env_u64("DILU_FAKE_CUDA_NS_PER_WAVE", 1000, 0, 1000000000000ull, &g_cfg.ns_per_wave)) {
        g_setup_rc = CUDA_ERROR_NO_DEVICE;
        return;
    }
    g_cfg.ndev = (int)ndev;
    for (int k = 0; k < MAX_DEVICES; k++) {
        memset(g_cfg.uuid[k], 0, 16);
        g_cfg.uuid[k][2] = 0xd1;
        g_cfg.uuid[k][3] = 0x1a;
        g_cfg.uuid[k][15] = (unsigned char)k;
        g_primary[k].magic = CTX_MAGIC;
        g_primary[k].device = k;
        g_primary[k].primary = 1;
        g_pools[k].magic = POOL_MAGIC;
        g_pools[k].device = k;
    }
    const char *uuid = getenv("DILU_FAKE_CUDA_UUID");
    if (uuid != NULL && *uuid != '\0' && !parse_uuid(uuid, g_cfg.uuid[0])) {
        fprintf(stderr, "fake_cuda: DILU_FAKE_CUDA_UUID=%s is not GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx\n",
                uuid);
        g_setup_rc = CUDA_ERROR_NO_DEVICE;
        return;
    }
    const char *state = getenv("DILU_FAKE_CUDA_STATE");
    if (state != NULL && *state != '\0' && !map_state(state)) {
        g_setup_rc = CUDA_ERROR_OPERATING_SYSTEM;
        return;
    }
    const char *log = getenv("DILU_FAKE_CUDA_LOG");
    if (log != NULL && *log != '\0') {
        g_log_fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
        if (g_log_fd < 0) {
            fprintf(stderr, "fake_cuda: cannot open DILU_FAKE_CUDA_LOG=%s: %s\n", log, strerror(errno));
            g_setup_rc = CUDA_ERROR_OPERATING_SYSTEM;
            return;
        }
    }
    g_owner_pid = getpid();
}

static CUresult ensure_setup(void) {
    pthread_once(&g_setup_once, setup);
    return g_setup_rc;
}

/* Setup done and cuInit called. */
static CUresult check_ready(void) {
    CUresult rc = ensure_setup();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    return CUDA_SUCCESS;
}

static bool valid_device(CUdevice dev) { return dev >= 0 && dev < g_cfg.ndev; }

/* Releases this process's outstanding memory from the (possibly shared) device state at exit, as a real
 * driver frees a process's allocations when it ends. */
__attribute__((destructor)) static void release_process_memory(void) {
    if (g_owner_pid == 0 || g_owner_pid != getpid()) {
        return;
    }
    pthread_mutex_lock(&g_mu);
    struct alloc_table *tables[2] = {&g_ptrs, &g_handles};
    for (int t = 0; t < 2; t++) {
        for (size_t i = 0; i < tables[t]->len; i++) {
            struct alloc_entry *e = &tables[t]->v[i];
            if (e->live && e->device >= 0) {
                __atomic_fetch_sub(&g_state->dev[e->device].bytes_used, e->size, __ATOMIC_ACQ_REL);
                e->live = 0;
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
}

/* ------------------------------------------------------------------------- */
/* Memory accounting                                                         */
/* ------------------------------------------------------------------------- */

static bool reserve_bytes(int dev, uint64_t size) {
    uint64_t *used = &g_state->dev[dev].bytes_used;
    uint64_t cur = __atomic_load_n(used, __ATOMIC_ACQUIRE);
    for (;;) {
        if (size > g_cfg.mem_total || cur > g_cfg.mem_total - size) {
            return false;
        }
        if (__atomic_compare_exchange_n(used, &cur, cur + size, true, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            return true;
        }
    }
}

static void unreserve_bytes(int dev, uint64_t size) {
    uint64_t *used = &g_state->dev[dev].bytes_used;
    uint64_t cur = __atomic_load_n(used, __ATOMIC_ACQUIRE);
    for (;;) {
        uint64_t next = cur > size ? cur - size : 0;
        if (__atomic_compare_exchange_n(used, &cur, next, true, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            return;
        }
    }
}

static void mem_info(int dev, uint64_t *free_out, uint64_t *total_out) {
    uint64_t used = __atomic_load_n(&g_state->dev[dev].bytes_used, __ATOMIC_ACQUIRE);
    *total_out = g_cfg.mem_total;
    *free_out = used >= g_cfg.mem_total ? 0 : g_cfg.mem_total - used;
}

/* Reserves `size` bytes on `dev` and records a new pointer. */
static CUresult alloc_ptr(int dev, uint64_t size, int kind, CUdeviceptr *out) {
    if (!reserve_bytes(dev, size)) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&g_mu);
    uint64_t ptr = g_next_ptr;
    struct alloc_entry e = {.key = ptr, .size = size, .device = dev, .kind = kind, .location = 0, .live = 1};
    bool ok = table_append(&g_ptrs, e);
    if (ok) {
        g_next_ptr += round_up(size, PTR_ALIGN);
    }
    pthread_mutex_unlock(&g_mu);
    if (!ok) {
        unreserve_bytes(dev, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = ptr;
    return CUDA_SUCCESS;
}

static CUresult free_ptr(CUdeviceptr ptr, uint64_t *freed) {
    *freed = 0;
    pthread_mutex_lock(&g_mu);
    struct alloc_entry *e = table_find(&g_ptrs, ptr);
    int dev = -1;
    if (e != NULL) {
        *freed = e->size;
        dev = e->device;
        table_kill(&g_ptrs, e);
    }
    pthread_mutex_unlock(&g_mu);
    if (e == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (dev >= 0) {
        unreserve_bytes(dev, *freed);
    }
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------------- */
/* Kernel execution                                                          */
/* ------------------------------------------------------------------------- */

static uint64_t kernel_duration(uint64_t blocks, uint64_t threads_per_block) {
    unsigned __int128 work = (unsigned __int128)blocks * threads_per_block * g_cfg.ns_per_wave;
    unsigned __int128 wave = (unsigned __int128)g_cfg.sms * THREADS_PER_SM;
    unsigned __int128 d = (work + wave - 1) / wave;
    const uint64_t cap = UINT64_MAX / 4;
    return d > cap ? cap : (uint64_t)d;
}

static uint64_t saturating_mul(uint64_t a, uint64_t b) {
    unsigned __int128 p = (unsigned __int128)a * b;
    return p > UINT64_MAX ? UINT64_MAX : (uint64_t)p;
}

/* Validates a launch shape; fills blocks and threads per block. */
static CUresult check_dims(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                           uint64_t *blocks, uint64_t *tpb) {
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (gx > 0x7fffffffu || gy > 65535u || gz > 65535u || bx > 1024u || by > 1024u || bz > 64u) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint64_t t = (uint64_t)bx * by * bz;
    if (t > MAX_THREADS_PER_BLOCK) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *blocks = (uint64_t)gx * gy * gz;
    *tpb = t;
    return CUDA_SUCCESS;
}

static uint64_t *stream_tail(CUstream s, CUresult *rc) {
    uintptr_t h = (uintptr_t)s;
    if (h <= 2) {
        return &g_special_tail[h];
    }
    if (s->magic != STREAM_MAGIC) {
        *rc = CUDA_ERROR_INVALID_HANDLE;
        return NULL;
    }
    return &s->tail;
}

/* Puts one kernel of `dur` ns on device `dev` behind the stream's tail. */
static void occupy(int dev, uint64_t *tail, uint64_t now, uint64_t dur, uint64_t *start_out,
                   uint64_t *end_out) {
    uint64_t *busy_p = &g_state->dev[dev].busy_until_ns;
    uint64_t busy = __atomic_load_n(busy_p, __ATOMIC_ACQUIRE);
    uint64_t start, end;
    for (;;) {
        uint64_t st = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
        start = max_u64(max_u64(now, busy), st);
        end = start + dur;
        if (__atomic_compare_exchange_n(busy_p, &busy, end, true, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            break;
        }
    }
    atomic_max_u64(tail, end);
    atomic_max_u64(&g_max_tail, end);
    *start_out = start;
    *end_out = end;
}

static CUresult launch(const char *fn, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                       unsigned by, unsigned bz, CUstream stream) {
    uint64_t blocks = 0, tpb = 0, start = 0, end = 0;
    uint64_t *tail = NULL;
    struct CUctx_st *ctx = t_current;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS && ctx == NULL) {
        rc = CUDA_ERROR_INVALID_CONTEXT;
    }
    if (rc == CUDA_SUCCESS && (f == NULL || f->magic != FUNC_MAGIC)) {
        rc = CUDA_ERROR_INVALID_HANDLE;
    }
    if (rc == CUDA_SUCCESS) {
        rc = check_dims(gx, gy, gz, bx, by, bz, &blocks, &tpb);
    }
    if (rc == CUDA_SUCCESS) {
        tail = stream_tail(stream, &rc);
    }
    if (rc == CUDA_SUCCESS) {
        occupy(ctx->device, tail, now_ns(), kernel_duration(blocks, tpb), &start, &end);
    }
    LOG(fn, rc,
        "stream=0x%" PRIxPTR " kernel=%s grid=%u,%u,%u block=%u,%u,%u blocks=%" PRIu64 " threads=%" PRIu64
        " start=%" PRIu64 " end=%" PRIu64,
        (uintptr_t)stream, (f != NULL && f->magic == FUNC_MAGIC) ? f->name : "-", gx, gy, gz, bx, by, bz,
        blocks, saturating_mul(blocks, tpb), start, end);
    return rc;
}

static CUresult launch_ex(const char *fn, const CUlaunchConfig *config, CUfunction f) {
    if (config == NULL || (config->numAttrs > 0 && config->attrs == NULL)) {
        CUresult rc = ensure_setup();
        if (rc == CUDA_SUCCESS) {
            rc = CUDA_ERROR_INVALID_VALUE;
        }
        LOG(fn, rc, "stream=0x0 kernel=- grid=0,0,0 block=0,0,0 blocks=0 threads=0 start=0 end=0");
        return rc;
    }
    return launch(fn, f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                  config->blockDimY, config->blockDimZ, config->hStream);
}

static CUresult sync_stream(const char *fn, CUstream stream) {
    CUresult rc = check_ready();
    uint64_t *tail = NULL;
    if (rc == CUDA_SUCCESS && (uintptr_t)stream <= 2 && t_current == NULL) {
        rc = CUDA_ERROR_INVALID_CONTEXT;
    }
    if (rc == CUDA_SUCCESS) {
        tail = stream_tail(stream, &rc);
    }
    uint64_t until = 0;
    if (rc == CUDA_SUCCESS) {
        until = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
        sleep_until_ns(until);
    }
    LOG(fn, rc, "stream=0x%" PRIxPTR " until=%" PRIu64, (uintptr_t)stream, until);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Init, version, errors                                                     */
/* ------------------------------------------------------------------------- */

EXPORT CUresult cuInit(unsigned int flags) {
    CUresult rc = ensure_setup();
    if (rc == CUDA_SUCCESS) {
        if (flags != 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (g_cfg.ndev == 0) {
            rc = CUDA_ERROR_NO_DEVICE;
        } else {
            __atomic_store_n(&g_initialized, 1, __ATOMIC_RELEASE);
        }
    }
    LOG_PLAIN("cuInit", rc);
    return rc;
}

EXPORT CUresult cuDriverGetVersion(int *driverVersion) {
    CUresult rc = ensure_setup();
    if (rc == CUDA_SUCCESS) {
        if (driverVersion == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *driverVersion = DRIVER_VERSION;
        }
    }
    LOG_PLAIN("cuDriverGetVersion", rc);
    return rc;
}

struct error_text {
    CUresult code;
    const char *name;
    const char *text;
};

static const struct error_text k_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_lookup(const char *fn, CUresult error, const char **pStr, bool name) {
    CUresult rc = ensure_setup();
    if (rc == CUDA_SUCCESS) {
        if (pStr == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            rc = CUDA_ERROR_INVALID_VALUE;
            *pStr = NULL;
            for (size_t i = 0; i < sizeof(k_errors) / sizeof(k_errors[0]); i++) {
                if (k_errors[i].code == error) {
                    *pStr = name ? k_errors[i].name : k_errors[i].text;
                    rc = CUDA_SUCCESS;
                    break;
                }
            }
        }
    }
    LOG(fn, rc, "error=%d", (int)error);
    return rc;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char **pStr) {
    return error_lookup("cuGetErrorString", error, pStr, false);
}

EXPORT CUresult cuGetErrorName(CUresult error, const char **pStr) {
    return error_lookup("cuGetErrorName", error, pStr, true);
}

/* ------------------------------------------------------------------------- */
/* Devices                                                                   */
/* ------------------------------------------------------------------------- */

EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (device == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(ordinal)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            *device = ordinal;
        }
    }
    LOG("cuDeviceGet", rc, "ordinal=%d", ordinal);
    return rc;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (count == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *count = g_cfg.ndev;
        }
    }
    LOG_PLAIN("cuDeviceGetCount", rc);
    return rc;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (name == NULL || len <= 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            snprintf(name, (size_t)len, "%s", "Dilu Software GPU");
        }
    }
    LOG_PLAIN("cuDeviceGetName", rc);
    return rc;
}

static CUresult device_uuid(const char *fn, CUuuid *uuid, CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (uuid == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            memcpy(uuid->bytes, g_cfg.uuid[dev], 16);
        }
    }
    LOG_PLAIN(fn, rc);
    return rc;
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return device_uuid("cuDeviceGetUuid", uuid, dev); }

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    return device_uuid("cuDeviceGetUuid_v2", uuid, dev);
}

EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (pi == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            switch ((int)attrib) {
            case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
                *pi = (int)g_cfg.sms;
                break;
            case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR:
                *pi = (int)THREADS_PER_SM;
                break;
            case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
                *pi = (int)MAX_THREADS_PER_BLOCK;
                break;
            default:
                rc = CUDA_ERROR_INVALID_VALUE;
            }
        }
    }
    LOG("cuDeviceGetAttribute", rc, "attr=%d", (int)attrib);
    return rc;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    uint64_t free_b = 0, total = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (bytes == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            mem_info(dev, &free_b, &total);
            *bytes = (size_t)total;
        }
    }
    LOG("cuDeviceTotalMem_v2", rc, "free=%" PRIu64 " total=%" PRIu64, free_b, total);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------- */

static bool valid_ctx(struct CUctx_st *ctx) { return ctx != NULL && ctx->magic == CTX_MAGIC; }

EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    (void)flags;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (pctx == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            struct CUctx_st *ctx = calloc(1, sizeof(*ctx));
            if (ctx == NULL) {
                rc = CUDA_ERROR_OUT_OF_MEMORY;
            } else {
                ctx->magic = CTX_MAGIC;
                ctx->device = dev;
                *pctx = ctx;
                t_current = ctx;
            }
        }
    }
    LOG("cuCtxCreate_v2", rc, "device=%d", dev);
    return rc;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (!valid_ctx(ctx) || ctx->primary) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else {
            if (t_current == ctx) {
                t_current = NULL;
            }
            ctx->magic = 0;
            free(ctx);
        }
    }
    LOG_PLAIN("cuCtxDestroy_v2", rc);
    return rc;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (pctx == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            __atomic_fetch_add(&g_primary_refs[dev], 1, __ATOMIC_ACQ_REL);
            *pctx = &g_primary[dev];
        }
    }
    LOG("cuDevicePrimaryCtxRetain", rc, "device=%d", dev);
    return rc;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            int cur = __atomic_load_n(&g_primary_refs[dev], __ATOMIC_ACQUIRE);
            for (;;) {
                if (cur <= 0) {
                    rc = CUDA_ERROR_INVALID_CONTEXT;
                    break;
                }
                if (__atomic_compare_exchange_n(&g_primary_refs[dev], &cur, cur - 1, true, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE)) {
                    break;
                }
            }
        }
    }
    LOG("cuDevicePrimaryCtxRelease_v2", rc, "device=%d", dev);
    return rc;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (ctx != NULL && !valid_ctx(ctx)) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else {
            t_current = ctx;
        }
    }
    LOG_PLAIN("cuCtxSetCurrent", rc);
    return rc;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (pctx == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *pctx = t_current;
        }
    }
    LOG_PLAIN("cuCtxGetCurrent", rc);
    return rc;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (device == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (t_current == NULL) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else {
            *device = t_current->device;
        }
    }
    LOG_PLAIN("cuCtxGetDevice", rc);
    return rc;
}

EXPORT CUresult cuCtxSynchronize(void) {
    CUresult rc = check_ready();
    uint64_t until = 0;
    if (rc == CUDA_SUCCESS && t_current == NULL) {
        rc = CUDA_ERROR_INVALID_CONTEXT;
    }
    if (rc == CUDA_SUCCESS) {
        until = __atomic_load_n(&g_max_tail, __ATOMIC_ACQUIRE);
        sleep_until_ns(until);
    }
    LOG("cuCtxSynchronize", rc, "until=%" PRIu64, until);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Streams                                                                   */
/* ------------------------------------------------------------------------- */

EXPORT CUresult cuStreamCreate(CUstream *phStream, unsigned int flags) {
    CUresult rc = check_ready();
    struct CUstream_st *s = NULL;
    if (rc == CUDA_SUCCESS) {
        if (phStream == NULL || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING) != 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (t_current == NULL) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else if ((s = calloc(1, sizeof(*s))) == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            s->magic = STREAM_MAGIC;
            s->device = t_current->device;
            *phStream = s;
        }
    }
    LOG("cuStreamCreate", rc, "stream=0x%" PRIxPTR, (uintptr_t)s);
    return rc;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream hStream) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if ((uintptr_t)hStream <= 2 || hStream->magic != STREAM_MAGIC) {
            rc = CUDA_ERROR_INVALID_HANDLE;
        } else {
            hStream->magic = 0;
            free(hStream);
        }
    }
    LOG("cuStreamDestroy_v2", rc, "stream=0x%" PRIxPTR, (uintptr_t)hStream);
    return rc;
}

EXPORT CUresult cuStreamSynchronize(CUstream hStream) { return sync_stream("cuStreamSynchronize", hStream); }

EXPORT CUresult cuStreamSynchronize_ptsz(CUstream hStream) {
    return sync_stream("cuStreamSynchronize_ptsz", hStream);
}

/* ------------------------------------------------------------------------- */
/* Modules                                                                   */
/* ------------------------------------------------------------------------- */

EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        struct CUmod_st *m = NULL;
        if (module == NULL || image == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (t_current == NULL) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else if ((m = calloc(1, sizeof(*m))) == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            m->magic = MOD_MAGIC;
            *module = m;
        }
    }
    LOG_PLAIN("cuModuleLoadData", rc);
    return rc;
}

EXPORT CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (hfunc == NULL || name == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (hmod == NULL || hmod->magic != MOD_MAGIC) {
            rc = CUDA_ERROR_INVALID_HANDLE;
        } else {
            /* Names are logged as one whitespace-free token. */
            char clean[KERNEL_NAME_MAX];
            size_t i = 0;
            for (; name[i] != '\0' && i + 1 < sizeof(clean); i++) {
                char c = name[i];
                clean[i] = (c == ' ' || c == '\t' || c == '\n' || c == '\r') ? '_' : c;
            }
            clean[i] = '\0';
            if (i == 0) {
                rc = CUDA_ERROR_NOT_FOUND;
            } else {
                pthread_mutex_lock(&g_mu);
                struct CUfunc_st *f = hmod->funcs;
                while (f != NULL && strcmp(f->name, clean) != 0) {
                    f = f->next;
                }
                if (f == NULL && (f = calloc(1, sizeof(*f))) != NULL) {
                    f->magic = FUNC_MAGIC;
                    memcpy(f->name, clean, i + 1);
                    f->next = hmod->funcs;
                    hmod->funcs = f;
                }
                pthread_mutex_unlock(&g_mu);
                if (f == NULL) {
                    rc = CUDA_ERROR_OUT_OF_MEMORY;
                } else {
                    *hfunc = f;
                }
            }
        }
    }
    LOG("cuModuleGetFunction", rc, "name=%s", name != NULL && *name != '\0' ? name : "-");
    return rc;
}

EXPORT CUresult cuModuleUnload(CUmodule hmod) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (hmod == NULL || hmod->magic != MOD_MAGIC) {
            rc = CUDA_ERROR_INVALID_HANDLE;
        } else {
            pthread_mutex_lock(&g_mu);
            struct CUfunc_st *f = hmod->funcs;
            while (f != NULL) {
                struct CUfunc_st *next = f->next;
                f->magic = 0;
                free(f);
                f = next;
            }
            hmod->magic = 0;
            pthread_mutex_unlock(&g_mu);
            free(hmod);
        }
    }
    LOG_PLAIN("cuModuleUnload", rc);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Memory                                                                    */
/* ------------------------------------------------------------------------- */

/* Common checks for allocations on the current context's device; the new pointer goes to *p and, on
 * success, to *user. */
static CUresult alloc_on_current(CUdeviceptr *user, uint64_t size, int kind, CUdeviceptr *p) {
    CUresult rc = check_ready();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (user == NULL || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (t_current == NULL) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    rc = alloc_ptr(t_current->device, size, kind, p);
    if (rc == CUDA_SUCCESS) {
        *user = *p;
    }
    return rc;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    CUdeviceptr p = 0;
    CUresult rc = alloc_on_current(dptr, bytesize, KIND_DEVICE, &p);
    LOG("cuMemAlloc_v2", rc, "bytes=%zu ptr=0x%llx", bytesize, p);
    return rc;
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                   unsigned int ElementSizeBytes) {
    CUdeviceptr p = 0;
    uint64_t pitch = 0, bytes = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (dptr == NULL || pPitch == NULL || WidthInBytes == 0 || Height == 0 ||
            (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16) ||
            WidthInBytes > MAX_MEM_BYTES || Height > MAX_MEM_BYTES) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            pitch = round_up(WidthInBytes, PITCH_ALIGN);
            unsigned __int128 b = (unsigned __int128)pitch * Height;
            if (b > MAX_MEM_BYTES) {
                bytes = 0;
                rc = CUDA_ERROR_OUT_OF_MEMORY;
            } else {
                bytes = (uint64_t)b;
                rc = alloc_on_current(dptr, bytes, KIND_PITCH, &p);
            }
            if (rc == CUDA_SUCCESS) {
                *pPitch = (size_t)pitch;
            }
        }
    }
    LOG("cuMemAllocPitch_v2", rc, "bytes=%" PRIu64 " pitch=%" PRIu64 " ptr=0x%llx", bytes, pitch, p);
    return rc;
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    CUdeviceptr p = 0;
    CUresult rc;
    if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST) {
        rc = check_ready();
        if (rc == CUDA_SUCCESS) {
            rc = CUDA_ERROR_INVALID_VALUE;
        }
    } else {
        rc = alloc_on_current(dptr, bytesize, KIND_MANAGED, &p);
    }
    LOG("cuMemAllocManaged", rc, "bytes=%zu ptr=0x%llx", bytesize, p);
    return rc;
}

static CUresult alloc_async(const char *fn, CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    CUdeviceptr p = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        stream_tail(stream, &rc);
    }
    if (rc == CUDA_SUCCESS) {
        rc = alloc_on_current(dptr, bytesize, KIND_ASYNC, &p);
    }
    LOG(fn, rc, "bytes=%zu ptr=0x%llx", bytesize, p);
    return rc;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async("cuMemAllocAsync", dptr, bytesize, hStream);
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async("cuMemAllocAsync_ptsz", dptr, bytesize, hStream);
}

static CUresult alloc_pool(const char *fn, CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                           CUstream stream) {
    CUdeviceptr p = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (dptr == NULL || bytesize == 0 || pool == NULL || pool->magic != POOL_MAGIC) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            stream_tail(stream, &rc);
        }
    }
    if (rc == CUDA_SUCCESS) {
        rc = alloc_ptr(pool->device, bytesize, KIND_POOL, &p);
    }
    if (rc == CUDA_SUCCESS) {
        *dptr = p;
    }
    LOG(fn, rc, "bytes=%zu ptr=0x%llx", bytesize, p);
    return rc;
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                        CUstream hStream) {
    return alloc_pool("cuMemAllocFromPoolAsync", dptr, bytesize, pool, hStream);
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                             CUstream hStream) {
    return alloc_pool("cuMemAllocFromPoolAsync_ptsz", dptr, bytesize, pool, hStream);
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    uint64_t freed = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        rc = free_ptr(dptr, &freed);
    }
    LOG("cuMemFree_v2", rc, "ptr=0x%llx bytes=%" PRIu64, dptr, freed);
    return rc;
}

static CUresult free_async(const char *fn, CUdeviceptr dptr, CUstream stream) {
    uint64_t freed = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        stream_tail(stream, &rc);
    }
    if (rc == CUDA_SUCCESS) {
        rc = free_ptr(dptr, &freed);
    }
    LOG(fn, rc, "ptr=0x%llx bytes=%" PRIu64, dptr, freed);
    return rc;
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    return free_async("cuMemFreeAsync", dptr, hStream);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
    return free_async("cuMemFreeAsync_ptsz", dptr, hStream);
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (pool_out == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (!valid_device(dev)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else {
            *pool_out = &g_pools[dev];
        }
    }
    LOG("cuDeviceGetDefaultMemPool", rc, "device=%d", dev);
    return rc;
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_out, size_t *total_out) {
    uint64_t free_b = 0, total = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (free_out == NULL || total_out == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (t_current == NULL) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else {
            mem_info(t_current->device, &free_b, &total);
            *free_out = (size_t)free_b;
            *total_out = (size_t)total;
        }
    }
    LOG("cuMemGetInfo_v2", rc, "free=%" PRIu64 " total=%" PRIu64, free_b, total);
    return rc;
}

EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                              CUmemAllocationGranularity_flags option) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (granularity == NULL || prop == NULL ||
            (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *granularity = (size_t)VMM_GRANULARITY;
        }
    }
    LOG_PLAIN("cuMemGetAllocationGranularity", rc);
    return rc;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    uint64_t h = 0;
    int location = prop != NULL ? (int)prop->location.type : 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (handle == NULL || prop == NULL || flags != 0 || size == 0 || size % VMM_GRANULARITY != 0 ||
            size > MAX_MEM_BYTES || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (location == CU_MEM_LOCATION_TYPE_DEVICE && !valid_device(prop->location.id)) {
            rc = CUDA_ERROR_INVALID_DEVICE;
        } else if (location < CU_MEM_LOCATION_TYPE_DEVICE || location > CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT) {
            rc = CUDA_ERROR_INVALID_VALUE;
        }
    }
    if (rc == CUDA_SUCCESS) {
        int dev = location == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : -1;
        if (dev >= 0 && !reserve_bytes(dev, size)) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            pthread_mutex_lock(&g_mu);
            h = g_next_handle;
            struct alloc_entry e = {
                .key = h, .size = size, .device = dev, .kind = KIND_VMM, .location = location, .live = 1};
            bool ok = table_append(&g_handles, e);
            if (ok) {
                g_next_handle++;
            }
            pthread_mutex_unlock(&g_mu);
            if (!ok) {
                h = 0;
                if (dev >= 0) {
                    unreserve_bytes(dev, size);
                }
                rc = CUDA_ERROR_OUT_OF_MEMORY;
            } else {
                *handle = h;
            }
        }
    }
    LOG("cuMemCreate", rc, "handle=%" PRIu64 " bytes=%zu location=%d", h, size, location);
    return rc;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    uint64_t size = 0;
    int location = 0;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        int dev = -1;
        pthread_mutex_lock(&g_mu);
        struct alloc_entry *e = table_find(&g_handles, handle);
        if (e != NULL) {
            size = e->size;
            location = e->location;
            dev = e->device;
            table_kill(&g_handles, e);
        }
        pthread_mutex_unlock(&g_mu);
        if (e == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if (dev >= 0) {
            unreserve_bytes(dev, size);
        }
    }
    LOG("cuMemRelease", rc, "handle=%llu bytes=%" PRIu64 " location=%d", handle, size, location);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Launches                                                                  */
/* ------------------------------------------------------------------------- */

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                               unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                               unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
    (void)sharedMemBytes;
    (void)kernelParams;
    (void)extra;
    return launch("cuLaunchKernel", f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, hStream);
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                    unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                    unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                    void **kernelParams, void **extra) {
    (void)sharedMemBytes;
    (void)kernelParams;
    (void)extra;
    return launch("cuLaunchKernel_ptsz", f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                  hStream);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra) {
    (void)kernelParams;
    (void)extra;
    return launch_ex("cuLaunchKernelEx", config, f);
}

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                                      void **extra) {
    (void)kernelParams;
    (void)extra;
    return launch_ex("cuLaunchKernelEx_ptsz", config, f);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                          unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                          unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                          void **kernelParams) {
    (void)sharedMemBytes;
    (void)kernelParams;
    return launch("cuLaunchCooperativeKernel", f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                  hStream);
}

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                               unsigned int gridDimZ, unsigned int blockDimX,
                                               unsigned int blockDimY, unsigned int blockDimZ,
                                               unsigned int sharedMemBytes, CUstream hStream,
                                               void **kernelParams) {
    (void)sharedMemBytes;
    (void)kernelParams;
    return launch("cuLaunchCooperativeKernel_ptsz", f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY,
                  blockDimZ, hStream);
}

/* ------------------------------------------------------------------------- */
/* Graphs                                                                    */
/* ------------------------------------------------------------------------- */

static bool valid_graph(struct CUgraph_st *g) { return g != NULL && g->magic == GRAPH_MAGIC; }

EXPORT CUresult cuGraphCreate(CUgraph *phGraph, unsigned int flags) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        struct CUgraph_st *g = NULL;
        if (phGraph == NULL || flags != 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else if ((g = calloc(1, sizeof(*g))) == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            g->magic = GRAPH_MAGIC;
            *phGraph = g;
        }
    }
    LOG_PLAIN("cuGraphCreate", rc);
    return rc;
}

static CUresult add_kernel_node(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps,
                                const CUDA_KERNEL_NODE_PARAMS_v2 *p) {
    CUresult rc = check_ready();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (out == NULL || p == NULL || (ndeps > 0 && deps == NULL)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (p->func == NULL || p->func->magic != FUNC_MAGIC) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint64_t blocks, tpb;
    rc = check_dims(p->gridDimX, p->gridDimY, p->gridDimZ, p->blockDimX, p->blockDimY, p->blockDimZ, &blocks,
                    &tpb);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    struct CUgraphNode_st *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    n->magic = NODE_MAGIC;
    n->type = CU_GRAPH_NODE_TYPE_KERNEL;
    n->graph = g;
    n->params = *p;
    pthread_mutex_lock(&g_mu);
    if (!valid_graph(g)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    }
    for (size_t i = 0; rc == CUDA_SUCCESS && i < ndeps; i++) {
        if (deps[i] == NULL || deps[i]->magic != NODE_MAGIC || deps[i]->graph != g) {
            rc = CUDA_ERROR_INVALID_VALUE;
        }
    }
    if (rc == CUDA_SUCCESS && g->len == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 8;
        struct CUgraphNode_st **v = realloc(g->nodes, cap * sizeof(*v));
        if (v == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            g->nodes = v;
            g->cap = cap;
        }
    }
    if (rc == CUDA_SUCCESS) {
        g->nodes[g->len++] = n;
    }
    pthread_mutex_unlock(&g_mu);
    if (rc != CUDA_SUCCESS) {
        free(n);
        return rc;
    }
    *out = n;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                        size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS_v2 *nodeParams) {
    CUresult rc = add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
    LOG_PLAIN("cuGraphAddKernelNode_v2", rc);
    return rc;
}

EXPORT CUresult cuGraphAddKernelNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                     size_t numDependencies, const CUDA_KERNEL_NODE_PARAMS *nodeParams) {
    CUresult rc;
    if (nodeParams == NULL) {
        rc = add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, NULL);
    } else {
        CUDA_KERNEL_NODE_PARAMS_v2 p;
        memset(&p, 0, sizeof(p));
        p.func = nodeParams->func;
        p.gridDimX = nodeParams->gridDimX;
        p.gridDimY = nodeParams->gridDimY;
        p.gridDimZ = nodeParams->gridDimZ;
        p.blockDimX = nodeParams->blockDimX;
        p.blockDimY = nodeParams->blockDimY;
        p.blockDimZ = nodeParams->blockDimZ;
        p.sharedMemBytes = nodeParams->sharedMemBytes;
        p.kernelParams = nodeParams->kernelParams;
        p.extra = nodeParams->extra;
        rc = add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, &p);
    }
    LOG_PLAIN("cuGraphAddKernelNode", rc);
    return rc;
}

EXPORT CUresult cuGraphGetNodes(CUgraph hGraph, CUgraphNode *nodes, size_t *numNodes) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (numNodes == NULL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            pthread_mutex_lock(&g_mu);
            if (!valid_graph(hGraph)) {
                rc = CUDA_ERROR_INVALID_VALUE;
            } else if (nodes == NULL) {
                *numNodes = hGraph->len;
            } else {
                size_t want = *numNodes;
                for (size_t i = 0; i < want; i++) {
                    nodes[i] = i < hGraph->len ? hGraph->nodes[i] : NULL;
                }
                if (want > hGraph->len) {
                    *numNodes = hGraph->len;
                }
            }
            pthread_mutex_unlock(&g_mu);
        }
    }
    LOG_PLAIN("cuGraphGetNodes", rc);
    return rc;
}

static bool valid_node(struct CUgraphNode_st *n) { return n != NULL && n->magic == NODE_MAGIC; }

EXPORT CUresult cuGraphNodeGetType(CUgraphNode hNode, CUgraphNodeType *type) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (type == NULL || !valid_node(hNode)) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *type = hNode->type;
        }
    }
    LOG_PLAIN("cuGraphNodeGetType", rc);
    return rc;
}

EXPORT CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode hNode, CUDA_KERNEL_NODE_PARAMS_v2 *nodeParams) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (nodeParams == NULL || !valid_node(hNode) || hNode->type != CU_GRAPH_NODE_TYPE_KERNEL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *nodeParams = hNode->params;
        }
    }
    LOG_PLAIN("cuGraphKernelNodeGetParams_v2", rc);
    return rc;
}

EXPORT CUresult cuGraphKernelNodeGetParams(CUgraphNode hNode, CUDA_KERNEL_NODE_PARAMS *nodeParams) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (nodeParams == NULL || !valid_node(hNode) || hNode->type != CU_GRAPH_NODE_TYPE_KERNEL) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            const CUDA_KERNEL_NODE_PARAMS_v2 *p = &hNode->params;
            nodeParams->func = p->func;
            nodeParams->gridDimX = p->gridDimX;
            nodeParams->gridDimY = p->gridDimY;
            nodeParams->gridDimZ = p->gridDimZ;
            nodeParams->blockDimX = p->blockDimX;
            nodeParams->blockDimY = p->blockDimY;
            nodeParams->blockDimZ = p->blockDimZ;
            nodeParams->sharedMemBytes = p->sharedMemBytes;
            nodeParams->kernelParams = p->kernelParams;
            nodeParams->extra = p->extra;
        }
    }
    LOG_PLAIN("cuGraphKernelNodeGetParams", rc);
    return rc;
}

/* Copies the graph's kernel nodes into a new exec. */
static CUresult instantiate(CUgraphExec *out, CUgraph g, unsigned long long flags) {
    CUresult rc = check_ready();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (out == NULL || (flags & ~0xfull) != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    struct CUgraphExec_st *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&g_mu);
    if (!valid_graph(g)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (g->len > 0) {
        e->kernels = calloc(g->len, sizeof(*e->kernels));
        if (e->kernels == NULL) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
        for (size_t i = 0; rc == CUDA_SUCCESS && i < g->len; i++) {
            const CUDA_KERNEL_NODE_PARAMS_v2 *p = &g->nodes[i]->params;
            if (g->nodes[i]->type != CU_GRAPH_NODE_TYPE_KERNEL) {
                continue;
            }
            uint64_t blocks = (uint64_t)p->gridDimX * p->gridDimY * p->gridDimZ;
            uint64_t tpb = (uint64_t)p->blockDimX * p->blockDimY * p->blockDimZ;
            struct exec_kernel *k = &e->kernels[e->len++];
            k->blocks = blocks;
            k->threads = saturating_mul(blocks, tpb);
            k->duration_ns = kernel_duration(blocks, tpb);
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (rc != CUDA_SUCCESS) {
        free(e->kernels);
        free(e);
        return rc;
    }
    e->magic = EXEC_MAGIC;
    *out = e;
    return CUDA_SUCCESS;
}

static void log_instantiate(const char *fn, CUresult rc, CUgraphExec *out) {
    struct CUgraphExec_st *e = (rc == CUDA_SUCCESS && out != NULL) ? *out : NULL;
    LOG(fn, rc, "exec=0x%" PRIxPTR " kernels=%zu", (uintptr_t)e, e != NULL ? e->len : (size_t)0);
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags) {
    CUresult rc = instantiate(phGraphExec, hGraph, flags);
    log_instantiate("cuGraphInstantiateWithFlags", rc, phGraphExec);
    return rc;
}

EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                                      char *logBuffer, size_t bufferSize) {
    CUresult rc = instantiate(phGraphExec, hGraph, 0);
    if (phErrorNode != NULL) {
        *phErrorNode = NULL;
    }
    if (logBuffer != NULL && bufferSize > 0) {
        logBuffer[0] = '\0';
    }
    log_instantiate("cuGraphInstantiate_v2", rc, phGraphExec);
    return rc;
}

static CUresult instantiate_with_params(const char *fn, CUgraphExec *phGraphExec, CUgraph hGraph,
                                        CUDA_GRAPH_INSTANTIATE_PARAMS *params) {
    CUresult rc;
    if (params == NULL) {
        rc = check_ready();
        if (rc == CUDA_SUCCESS) {
            rc = CUDA_ERROR_INVALID_VALUE;
        }
    } else {
        if ((uintptr_t)params->hUploadStream > 2 && params->hUploadStream->magic != STREAM_MAGIC) {
            rc = CUDA_ERROR_INVALID_HANDLE;
        } else {
            rc = instantiate(phGraphExec, hGraph, params->flags);
        }
        params->hErrNode_out = NULL;
        params->result_out = rc == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS : CUDA_GRAPH_INSTANTIATE_ERROR;
    }
    log_instantiate(fn, rc, phGraphExec);
    return rc;
}

EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                             CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams) {
    return instantiate_with_params("cuGraphInstantiateWithParams", phGraphExec, hGraph, instantiateParams);
}

EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                                  CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams) {
    return instantiate_with_params("cuGraphInstantiateWithParams_ptsz", phGraphExec, hGraph, instantiateParams);
}

static CUresult graph_launch(const char *fn, CUgraphExec e, CUstream stream) {
    uint64_t blocks = 0, threads = 0, start = 0, end = 0;
    size_t kernels = 0;
    struct CUctx_st *ctx = t_current;
    uint64_t *tail = NULL;
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS && ctx == NULL) {
        rc = CUDA_ERROR_INVALID_CONTEXT;
    }
    if (rc == CUDA_SUCCESS && (e == NULL || e->magic != EXEC_MAGIC)) {
        rc = CUDA_ERROR_INVALID_HANDLE;
    }
    if (rc == CUDA_SUCCESS) {
        tail = stream_tail(stream, &rc);
    }
    if (rc == CUDA_SUCCESS) {
        uint64_t now = now_ns();
        kernels = e->len;
        if (kernels == 0) {
            start = end = now;
        }
        for (size_t i = 0; i < e->len; i++) {
            uint64_t s, t;
            occupy(ctx->device, tail, now, e->kernels[i].duration_ns, &s, &t);
            if (i == 0) {
                start = s;
            }
            end = t;
            blocks += e->kernels[i].blocks;
            threads += e->kernels[i].threads;
        }
    }
    LOG(fn, rc,
        "stream=0x%" PRIxPTR " exec=0x%" PRIxPTR " kernels=%zu blocks=%" PRIu64 " threads=%" PRIu64
        " start=%" PRIu64 " end=%" PRIu64,
        (uintptr_t)stream, (uintptr_t)e, kernels, blocks, threads, start, end);
    return rc;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    return graph_launch("cuGraphLaunch", hGraphExec, hStream);
}

EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream) {
    return graph_launch("cuGraphLaunch_ptsz", hGraphExec, hStream);
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec hGraphExec) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        if (hGraphExec == NULL || hGraphExec->magic != EXEC_MAGIC) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            hGraphExec->magic = 0;
            free(hGraphExec->kernels);
            free(hGraphExec);
        }
    }
    LOG_PLAIN("cuGraphExecDestroy", rc);
    return rc;
}

EXPORT CUresult cuGraphDestroy(CUgraph hGraph) {
    CUresult rc = check_ready();
    if (rc == CUDA_SUCCESS) {
        pthread_mutex_lock(&g_mu);
        if (!valid_graph(hGraph)) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            for (size_t i = 0; i < hGraph->len; i++) {
                hGraph->nodes[i]->magic = 0;
                free(hGraph->nodes[i]);
            }
            free(hGraph->nodes);
            hGraph->magic = 0;
        }
        pthread_mutex_unlock(&g_mu);
        if (rc == CUDA_SUCCESS) {
            free(hGraph);
        }
    }
    LOG_PLAIN("cuGraphDestroy", rc);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* cuGetProcAddress                                                          */
/* ------------------------------------------------------------------------- */

static void *g_self;
static pthread_once_t g_self_once = PTHREAD_ONCE_INIT;

/* Our own handle, as a real driver resolves its entry points internally. The address of a static function is
 * used so an interposer exporting the same cu* names cannot redirect the look-up. */
static void find_self(void) {
    Dl_info info;
    if (dladdr((void *)&find_self, &info) != 0 && info.dli_fname != NULL) {
        g_self = dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_NOW);
    }
    if (g_self == NULL) {
        fprintf(stderr, "fake_cuda: cannot find the driver's own handle for cuGetProcAddress\n");
    }
}

static bool in_list(const char *s, const char *const *list) {
    for (; *list != NULL; list++) {
        if (strcmp(s, *list) == 0) {
            return true;
        }
    }
    return false;
}

/* Names a caller may not pass: cuGetProcAddress takes base names only. */
static bool is_versioned_name(const char *s) {
    size_t n = strlen(s);
    if (n > 5 && (strcmp(s + n - 5, "_ptsz") == 0 || strcmp(s + n - 5, "_ptds") == 0)) {
        return true;
    }
    const char *u = strrchr(s, '_');
    if (u != NULL && u[1] == 'v' && u[2] >= '0' && u[2] <= '9') {
        const char *p = u + 2;
        while (*p >= '0' && *p <= '9') {
            p++;
        }
        return *p == '\0';
    }
    return false;
}

/* Maps a base name to the exported name for (version, flags); false if the name is not a base name. */
static bool versioned_name(const char *symbol, int version, cuuint64_t flags, char *out, size_t out_len) {
    static const char *const v2_3020[] = {"cuMemAlloc",       "cuMemAllocPitch", "cuMemFree",    "cuMemGetInfo",
                                          "cuDeviceTotalMem", "cuCtxCreate",     "cuCtxDestroy", "cuStreamDestroy",
                                          NULL};
    static const char *const v2_12000[] = {"cuGraphKernelNodeGetParams", "cuGraphAddKernelNode", "cuGetProcAddress",
                                           NULL};
    static const char *const ptsz[] = {"cuLaunchKernel",
                                       "cuLaunchKernelEx",
                                       "cuLaunchCooperativeKernel",
                                       "cuGraphLaunch",
                                       "cuMemAllocAsync",
                                       "cuMemAllocFromPoolAsync",
                                       "cuMemFreeAsync",
                                       "cuStreamSynchronize",
                                       "cuGraphInstantiateWithParams",
                                       NULL};
    if (is_versioned_name(symbol)) {
        return false;
    }
    const char *suffix = "";
    const char *base = symbol;
    if (version >= 3020 && in_list(symbol, v2_3020)) {
        suffix = "_v2";
    } else if (version >= 11000 && strcmp(symbol, "cuDevicePrimaryCtxRelease") == 0) {
        suffix = "_v2";
    } else if (version >= 11040 && strcmp(symbol, "cuDeviceGetUuid") == 0) {
        suffix = "_v2";
    } else if (strcmp(symbol, "cuGraphInstantiate") == 0) {
        if (version >= 12000) {
            base = "cuGraphInstantiateWithFlags";
        } else if (version >= 11000) {
            suffix = "_v2";
        }
    } else if (version >= 12000 && in_list(symbol, v2_12000)) {
        suffix = "_v2";
    }
    if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0 && in_list(symbol, ptsz)) {
        suffix = "_ptsz";
    }
    int n = snprintf(out, out_len, "%s%s", base, suffix);
    return n > 0 && (size_t)n < out_len;
}

static CUresult get_proc_address(const char *fn, const char *symbol, void **pfn, int version, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *status) {
    char name[128];
    bool resolved = false;
    CUresult rc = ensure_setup();
    if (rc == CUDA_SUCCESS) {
        if (symbol == NULL || pfn == NULL || (flags & ~(cuuint64_t)3) != 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
        } else {
            *pfn = NULL;
            rc = CUDA_ERROR_NOT_FOUND;
            if (versioned_name(symbol, version, flags, name, sizeof(name))) {
                pthread_once(&g_self_once, find_self);
                if (g_self == NULL) {
                    rc = CUDA_ERROR_UNKNOWN;
                } else {
                    void *p = dlsym(g_self, name);
                    if (p != NULL) {
                        *pfn = p;
                        resolved = true;
                        rc = CUDA_SUCCESS;
                    }
                }
            }
        }
    }
    if (status != NULL) {
        *status = resolved ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    }
    LOG(fn, rc, "symbol=%s version=%d flags=%llu resolved=%s", symbol != NULL ? symbol : "-", version,
        (unsigned long long)flags, resolved ? name : "-");
    return rc;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    return get_proc_address("cuGetProcAddress", symbol, pfn, cudaVersion, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *symbolStatus) {
    return get_proc_address("cuGetProcAddress_v2", symbol, pfn, cudaVersion, flags, symbolStatus);
}
