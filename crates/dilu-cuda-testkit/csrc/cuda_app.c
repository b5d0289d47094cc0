/*
 * A CUDA driver-API test application. It reaches the driver in one of three ways and runs commands given as
 * argv words, printing one `key=value ...` line per command.
 *
 *   cuda_app [--resolve linked|dlsym|procaddr] [--ptds] [--stream default|created] [--device N] COMMAND...
 *
 * --resolve linked    call the functions the binary was linked against (only in the -DDILU_APP_LINKED build)
 * --resolve dlsym     dlopen("libcuda.so.1") and dlsym every exported (versioned) name
 * --resolve procaddr  dlsym only cuGetProcAddress_v2, then resolve every base name through it (version 12040)
 * --ptds              per-thread default stream: procaddr passes CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
 *                     linked and dlsym use the _ptsz exports where one exists
 *
 * Commands (comma-separated fields):
 *   alloc,<v2|pitch|managed|async|pool|vmm>,<bytes>   free,<id>   meminfo   totalmem
 *   launch,<kernel|ex|coop>,<n>,<gridX>,<blockX>       graph,<kernels>,<gridX>,<blockX>,<n>
 *   burn,<seconds>,<gridX>,<blockX>,<sync_every>        sync   sleep,<ms>   info
 *   procaddr,<symbol>,<version>,<flags>
 *
 * Setup failures and malformed commands exit 2 with a message on stderr; CUresult errors of commands are
 * printed (rc=...) and the application still exits 0.
 */
#define _GNU_SOURCE
#include "cuda_subset.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* X(base name, exported name, exported name with the per-thread default stream) */
#define API_LIST(X)                                                                                          \
    X(cuInit, cuInit, cuInit)                                                                                \
    X(cuGetErrorName, cuGetErrorName, cuGetErrorName)                                                        \
    X(cuDeviceGet, cuDeviceGet, cuDeviceGet)                                                                 \
    X(cuDeviceGetUuid, cuDeviceGetUuid_v2, cuDeviceGetUuid_v2)                                               \
    X(cuDeviceGetAttribute, cuDeviceGetAttribute, cuDeviceGetAttribute)                                      \
    X(cuDeviceTotalMem, cuDeviceTotalMem_v2, cuDeviceTotalMem_v2)                                            \
    X(cuDeviceGetDefaultMemPool, cuDeviceGetDefaultMemPool, cuDeviceGetDefaultMemPool)                       \
    X(cuCtxCreate, cuCtxCreate_v2, cuCtxCreate_v2)                                                           \
    X(cuCtxSynchronize, cuCtxSynchronize, cuCtxSynchronize)                                                  \
    X(cuStreamCreate, cuStreamCreate, cuStreamCreate)                                                        \
    X(cuStreamSynchronize, cuStreamSynchronize, cuStreamSynchronize_ptsz)                                    \
    X(cuModuleLoadData, cuModuleLoadData, cuModuleLoadData)                                                  \
    X(cuModuleGetFunction, cuModuleGetFunction, cuModuleGetFunction)                                         \
    X(cuMemAlloc, cuMemAlloc_v2, cuMemAlloc_v2)                                                              \
    X(cuMemAllocPitch, cuMemAllocPitch_v2, cuMemAllocPitch_v2)                                               \
    X(cuMemAllocManaged, cuMemAllocManaged, cuMemAllocManaged)                                               \
    X(cuMemAllocAsync, cuMemAllocAsync, cuMemAllocAsync_ptsz)                                                \
    X(cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz)                        \
    X(cuMemFree, cuMemFree_v2, cuMemFree_v2)                                                                 \
    X(cuMemFreeAsync, cuMemFreeAsync, cuMemFreeAsync_ptsz)                                                   \
    X(cuMemGetInfo, cuMemGetInfo_v2, cuMemGetInfo_v2)                                                        \
    X(cuMemGetAllocationGranularity, cuMemGetAllocationGranularity, cuMemGetAllocationGranularity)           \
    X(cuMemCreate, cuMemCreate, cuMemCreate)                                                                 \
    X(cuMemRelease, cuMemRelease, cuMemRelease)                                                              \
    X(cuLaunchKernel, cuLaunchKernel, cuLaunchKernel_ptsz)                                                   \
    X(cuLaunchKernelEx, cuLaunchKernelEx, cuLaunchKernelEx_ptsz)                                             \
    X(cuLaunchCooperativeKernel, cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz)                  \
    X(cuGraphCreate, cuGraphCreate, cuGraphCreate)                                                           \
    X(cuGraphAddKernelNode, cuGraphAddKernelNode_v2, cuGraphAddKernelNode_v2)                                \
    X(cuGraphInstantiate, cuGraphInstantiateWithFlags, cuGraphInstantiateWithFlags)                          \
    X(cuGraphLaunch, cuGraphLaunch, cuGraphLaunch_ptsz)                                                      \
    X(cuGraphExecDestroy, cuGraphExecDestroy, cuGraphExecDestroy)                                            \
    X(cuGraphDestroy, cuGraphDestroy, cuGraphDestroy)

#define API_FIELD(base, exported, ptsz) __typeof__(&exported) base;
static struct {
    API_LIST(API_FIELD)
    __typeof__(&cuGetProcAddress_v2) getProcAddress;
} api;

enum resolve_mode { RESOLVE_LINKED, RESOLVE_DLSYM, RESOLVE_PROCADDR };

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda_app: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static const char *err_name(CUresult rc) {
    const char *s = NULL;
    if (api.cuGetErrorName == NULL || api.cuGetErrorName(rc, &s) != CUDA_SUCCESS || s == NULL) {
        return "?";
    }
    return s;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- Resolution ---- */

#ifdef DILU_APP_LINKED
static void resolve_linked(bool ptds) {
#define API_LINK(base, exported, ptsz) api.base = ptds ? &ptsz : &exported;
    API_LIST(API_LINK)
    api.getProcAddress = &cuGetProcAddress_v2;
}
#endif

static void *open_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (h == NULL) {
        die("dlopen(libcuda.so.1) failed: %s", dlerror());
    }
    return h;
}

static void *must_dlsym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (p == NULL) {
        die("dlsym(%s) failed: %s", name, dlerror());
    }
    return p;
}

static void resolve_dlsym(bool ptds) {
    void *h = open_driver();
#define API_DLSYM(base, exported, ptsz) api.base = (__typeof__(api.base))must_dlsym(h, ptds ? #ptsz : #exported);
    API_LIST(API_DLSYM)
    api.getProcAddress = (__typeof__(api.getProcAddress))must_dlsym(h, "cuGetProcAddress_v2");
}

static void *must_procaddr(const char *name, cuuint64_t flags) {
    void *p = NULL;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult rc = api.getProcAddress(name, &p, 12040, flags, &status);
    if (rc != CUDA_SUCCESS || p == NULL || status != CU_GET_PROC_ADDRESS_SUCCESS) {
        die("cuGetProcAddress_v2(%s, 12040, flags=%llu) failed: rc=%d status=%d", name, (unsigned long long)flags,
            (int)rc, (int)status);
    }
    return p;
}

static void resolve_procaddr(bool ptds) {
    void *h = open_driver();
    api.getProcAddress = (__typeof__(api.getProcAddress))must_dlsym(h, "cuGetProcAddress_v2");
    cuuint64_t flags = ptds ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT;
#define API_PROC(base, exported, ptsz) api.base = (__typeof__(api.base))must_procaddr(#base, flags);
    API_LIST(API_PROC)
}

/* ---- State ---- */

enum alloc_kind { K_V2, K_PITCH, K_MANAGED, K_ASYNC, K_POOL, K_VMM };

static const char *const k_kind_names[] = {"v2", "pitch", "managed", "async", "pool", "vmm"};

struct allocation {
    enum alloc_kind kind;
    CUdeviceptr ptr;
    CUmemGenericAllocationHandle handle;
};

static struct allocation *g_allocs;
static size_t g_nallocs;
static size_t g_cap_allocs;

static CUdevice g_dev;
static CUstream g_stream;
static CUfunction g_func;

/* ---- Argument parsing ---- */

#define MAX_FIELDS 8

static int split(char *s, char **fields) {
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        if (n == MAX_FIELDS) {
            return -1;
        }
        fields[n++] = tok;
    }
    return n;
}

static uint64_t parse_u64(const char *cmd, const char *s) {
    if (*s < '0' || *s > '9') {
        die("%s: '%s' is not a non-negative integer", cmd, s);
    }
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *end != '\0') {
        die("%s: '%s' is not a non-negative integer", cmd, s);
    }
    return (uint64_t)v;
}

static unsigned parse_u32(const char *cmd, const char *s) {
    uint64_t v = parse_u64(cmd, s);
    if (v > 0xffffffffull) {
        die("%s: '%s' does not fit in 32 bits", cmd, s);
    }
    return (unsigned)v;
}

static double parse_f64(const char *cmd, const char *s) {
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0)) {
        die("%s: '%s' is not a non-negative number", cmd, s);
    }
    return v;
}

static void expect_fields(const char *cmd, int got, int want, const char *usage) {
    if (got != want) {
        die("%s: expected %s", cmd, usage);
    }
}

/* ---- Commands ---- */

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void cmd_alloc(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 3, "alloc,<v2|pitch|managed|async|pool|vmm>,<bytes>");
    int kind = -1;
    for (int i = 0; i < 6; i++) {
        if (strcmp(f[1], k_kind_names[i]) == 0) {
            kind = i;
        }
    }
    if (kind < 0) {
        die("%s: unknown allocation kind '%s'", cmd, f[1]);
    }
    uint64_t bytes = parse_u64(cmd, f[2]);
    struct allocation a = {.kind = (enum alloc_kind)kind, .ptr = 0, .handle = 0};
    CUresult rc = CUDA_SUCCESS;
    size_t pitch = 0;
    switch (a.kind) {
    case K_V2:
        rc = api.cuMemAlloc(&a.ptr, (size_t)bytes);
        break;
    case K_PITCH:
        rc = api.cuMemAllocPitch(&a.ptr, &pitch, (size_t)bytes, 1, 4);
        break;
    case K_MANAGED:
        rc = api.cuMemAllocManaged(&a.ptr, (size_t)bytes, CU_MEM_ATTACH_GLOBAL);
        break;
    case K_ASYNC:
        rc = api.cuMemAllocAsync(&a.ptr, (size_t)bytes, g_stream);
        break;
    case K_POOL: {
        CUmemoryPool pool = NULL;
        rc = api.cuDeviceGetDefaultMemPool(&pool, g_dev);
        if (rc == CUDA_SUCCESS) {
            rc = api.cuMemAllocFromPoolAsync(&a.ptr, (size_t)bytes, pool, g_stream);
        }
        break;
    }
    case K_VMM: {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof(prop));
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = g_dev;
        size_t gran = 0;
        rc = api.cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
        if (rc == CUDA_SUCCESS) {
            rc = api.cuMemCreate(&a.handle, (size_t)bytes, &prop, 0);
        }
        break;
    }
    }
    if (g_nallocs == g_cap_allocs) {
        size_t cap = g_cap_allocs ? g_cap_allocs * 2 : 64;
        struct allocation *v = realloc(g_allocs, cap * sizeof(*v));
        if (v == NULL) {
            die("out of host memory");
        }
        g_allocs = v;
        g_cap_allocs = cap;
    }
    size_t id = g_nallocs++;
    g_allocs[id] = a;
    if (a.kind == K_VMM) {
        out("op=alloc kind=%s bytes=%" PRIu64 " id=%zu handle=%llu rc=%d", f[1], bytes, id, a.handle, (int)rc);
    } else if (a.kind == K_PITCH) {
        out("op=alloc kind=%s bytes=%" PRIu64 " id=%zu ptr=0x%llx pitch=%zu rc=%d", f[1], bytes, id, a.ptr, pitch,
            (int)rc);
    } else {
        out("op=alloc kind=%s bytes=%" PRIu64 " id=%zu ptr=0x%llx rc=%d", f[1], bytes, id, a.ptr, (int)rc);
    }
}

static void cmd_free(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 2, "free,<id>");
    uint64_t id = parse_u64(cmd, f[1]);
    if (id >= g_nallocs) {
        die("%s: no allocation with id %" PRIu64 " (%zu made so far)", cmd, id, g_nallocs);
    }
    struct allocation *a = &g_allocs[id];
    CUresult rc;
    switch (a->kind) {
    case K_ASYNC:
    case K_POOL:
        rc = api.cuMemFreeAsync(a->ptr, g_stream);
        break;
    case K_VMM:
        rc = api.cuMemRelease(a->handle);
        break;
    default:
        rc = api.cuMemFree(a->ptr);
        break;
    }
    out("op=free id=%" PRIu64 " kind=%s rc=%d", id, k_kind_names[a->kind], (int)rc);
}

static CUresult launch_once(const char *which, unsigned grid, unsigned block) {
    if (strcmp(which, "kernel") == 0) {
        return api.cuLaunchKernel(g_func, grid, 1, 1, block, 1, 1, 0, g_stream, NULL, NULL);
    }
    if (strcmp(which, "ex") == 0) {
        CUlaunchConfig cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.gridDimX = grid;
        cfg.gridDimY = 1;
        cfg.gridDimZ = 1;
        cfg.blockDimX = block;
        cfg.blockDimY = 1;
        cfg.blockDimZ = 1;
        cfg.hStream = g_stream;
        return api.cuLaunchKernelEx(&cfg, g_func, NULL, NULL);
    }
    return api.cuLaunchCooperativeKernel(g_func, grid, 1, 1, block, 1, 1, 0, g_stream, NULL);
}

static void cmd_launch(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 5, "launch,<kernel|ex|coop>,<n>,<gridX>,<blockX>");
    if (strcmp(f[1], "kernel") != 0 && strcmp(f[1], "ex") != 0 && strcmp(f[1], "coop") != 0) {
        die("%s: unknown launch API '%s' (kernel, ex or coop)", cmd, f[1]);
    }
    uint64_t count = parse_u64(cmd, f[2]);
    unsigned grid = parse_u32(cmd, f[3]);
    unsigned block = parse_u32(cmd, f[4]);
    CUresult first = CUDA_SUCCESS;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < count; i++) {
        CUresult rc = launch_once(f[1], grid, block);
        if (first == CUDA_SUCCESS) {
            first = rc;
        }
    }
    uint64_t t1 = now_ns();
    out("op=launch api=%s n=%" PRIu64 " grid=%u block=%u rc=%d elapsed_ns=%" PRIu64, f[1], count, grid, block,
        (int)first, t1 - t0);
}

static void cmd_graph(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 5, "graph,<kernels>,<gridX>,<blockX>,<n>");
    uint64_t kernels = parse_u64(cmd, f[1]);
    unsigned grid = parse_u32(cmd, f[2]);
    unsigned block = parse_u32(cmd, f[3]);
    uint64_t count = parse_u64(cmd, f[4]);
    uint64_t t0 = now_ns();
    CUresult first = CUDA_SUCCESS;
#define KEEP(expr)                                                                                           \
    do {                                                                                                     \
        CUresult r_ = (expr);                                                                                \
        if (first == CUDA_SUCCESS) first = r_;                                                               \
    } while (0)
    CUgraph graph = NULL;
    CUgraphExec exec = NULL;
    KEEP(api.cuGraphCreate(&graph, 0));
    CUgraphNode prev = NULL;
    for (uint64_t i = 0; first == CUDA_SUCCESS && i < kernels; i++) {
        CUDA_KERNEL_NODE_PARAMS_v2 p;
        memset(&p, 0, sizeof(p));
        p.func = g_func;
        p.gridDimX = grid;
        p.gridDimY = 1;
        p.gridDimZ = 1;
        p.blockDimX = block;
        p.blockDimY = 1;
        p.blockDimZ = 1;
        CUgraphNode node = NULL;
        KEEP(api.cuGraphAddKernelNode(&node, graph, prev != NULL ? &prev : NULL, prev != NULL ? 1 : 0, &p));
        prev = node;
    }
    if (first == CUDA_SUCCESS) {
        KEEP(api.cuGraphInstantiate(&exec, graph, 0));
    }
    if (graph != NULL) {
        KEEP(api.cuGraphDestroy(graph));
    }
    for (uint64_t i = 0; first == CUDA_SUCCESS && i < count; i++) {
        KEEP(api.cuGraphLaunch(exec, g_stream));
    }
    if (first == CUDA_SUCCESS) {
        KEEP(api.cuStreamSynchronize(g_stream));
    }
    if (exec != NULL) {
        KEEP(api.cuGraphExecDestroy(exec));
    }
#undef KEEP
    uint64_t t1 = now_ns();
    out("op=graph kernels=%" PRIu64 " grid=%u block=%u n=%" PRIu64 " rc=%d elapsed_ns=%" PRIu64, kernels, grid,
        block, count, (int)first, t1 - t0);
}

static void cmd_burn(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 5, "burn,<seconds>,<gridX>,<blockX>,<sync_every>");
    double seconds = parse_f64(cmd, f[1]);
    unsigned grid = parse_u32(cmd, f[2]);
    unsigned block = parse_u32(cmd, f[3]);
    uint64_t every = parse_u64(cmd, f[4]);
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(seconds * 1e9);
    uint64_t launches = 0;
    CUresult first = CUDA_SUCCESS;
    while (now_ns() < deadline) {
        CUresult rc = api.cuLaunchKernel(g_func, grid, 1, 1, block, 1, 1, 0, g_stream, NULL, NULL);
        if (rc != CUDA_SUCCESS) {
            first = rc;
            break;
        }
        launches++;
        if (every > 0 && launches % every == 0) {
            rc = api.cuStreamSynchronize(g_stream);
            if (rc != CUDA_SUCCESS) {
                first = rc;
                break;
            }
        }
    }
    if (first == CUDA_SUCCESS) {
        first = api.cuStreamSynchronize(g_stream);
    }
    uint64_t t1 = now_ns();
    out("op=burn launches=%" PRIu64 " blocks=%" PRIu64 " threads=%" PRIu64 " elapsed_ns=%" PRIu64 " rc=%d", launches,
        launches * grid, launches * grid * block, t1 - t0, (int)first);
}

static void cmd_info(void) {
    CUuuid uuid;
    memset(&uuid, 0, sizeof(uuid));
    int sms = 0, tpsm = 0, tpb = 0;
    size_t total = 0;
    CUresult rc = api.cuDeviceGetUuid(&uuid, g_dev);
    if (rc == CUDA_SUCCESS) rc = api.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, g_dev);
    if (rc == CUDA_SUCCESS)
        rc = api.cuDeviceGetAttribute(&tpsm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, g_dev);
    if (rc == CUDA_SUCCESS) rc = api.cuDeviceGetAttribute(&tpb, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, g_dev);
    if (rc == CUDA_SUCCESS) rc = api.cuDeviceTotalMem(&total, g_dev);
    const unsigned char *b = (const unsigned char *)uuid.bytes;
    out("op=info device=%d uuid=GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x sms=%d "
        "threads_per_sm=%d threads_per_block=%d total=%zu rc=%d",
        g_dev, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
        sms, tpsm, tpb, total, (int)rc);
}

static void cmd_procaddr(const char *cmd, char **f, int n) {
    expect_fields(cmd, n, 4, "procaddr,<symbol>,<version>,<flags>");
    int version = (int)parse_u32(cmd, f[2]);
    cuuint64_t flags = parse_u64(cmd, f[3]);
    void *p = NULL;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult rc = api.getProcAddress(f[1], &p, version, flags, &status);
    out("op=procaddr symbol=%s version=%d flags=%llu found=%d status=%d rc=%d", f[1], version,
        (unsigned long long)flags, p != NULL, (int)status, (int)rc);
}

static void run_command(const char *word) {
    char buf[512];
    if (strlen(word) >= sizeof(buf)) {
        die("command too long: %s", word);
    }
    strcpy(buf, word);
    char *f[MAX_FIELDS];
    int n = split(buf, f);
    if (n <= 0) {
        die("malformed command '%s'", word);
    }
    if (strcmp(f[0], "alloc") == 0) {
        cmd_alloc(word, f, n);
    } else if (strcmp(f[0], "free") == 0) {
        cmd_free(word, f, n);
    } else if (strcmp(f[0], "meminfo") == 0) {
        expect_fields(word, n, 1, "meminfo");
        size_t fr = 0, total = 0;
        CUresult rc = api.cuMemGetInfo(&fr, &total);
        out("op=meminfo free=%zu total=%zu rc=%d", fr, total, (int)rc);
    } else if (strcmp(f[0], "totalmem") == 0) {
        expect_fields(word, n, 1, "totalmem");
        size_t total = 0;
        CUresult rc = api.cuDeviceTotalMem(&total, g_dev);
        out("op=totalmem bytes=%zu rc=%d", total, (int)rc);
    } else if (strcmp(f[0], "launch") == 0) {
        cmd_launch(word, f, n);
    } else if (strcmp(f[0], "graph") == 0) {
        cmd_graph(word, f, n);
    } else if (strcmp(f[0], "burn") == 0) {
        cmd_burn(word, f, n);
    } else if (strcmp(f[0], "sync") == 0) {
        expect_fields(word, n, 1, "sync");
        uint64_t t0 = now_ns();
        CUresult rc = api.cuCtxSynchronize();
        out("op=sync rc=%d elapsed_ns=%" PRIu64, (int)rc, now_ns() - t0);
    } else if (strcmp(f[0], "sleep") == 0) {
        expect_fields(word, n, 2, "sleep,<ms>");
        uint64_t ms = parse_u64(word, f[1]);
        struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        out("op=sleep ms=%" PRIu64, ms);
    } else if (strcmp(f[0], "info") == 0) {
        expect_fields(word, n, 1, "info");
        cmd_info();
    } else if (strcmp(f[0], "procaddr") == 0) {
        cmd_procaddr(word, f, n);
    } else {
        die("unknown command '%s'", word);
    }
}

int main(int argc, char **argv) {
    enum resolve_mode mode =
#ifdef DILU_APP_LINKED
        RESOLVE_LINKED;
#else
        RESOLVE_DLSYM;
#endif
    bool ptds = false;
    bool created_stream = false;
    int device = 0;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--resolve") == 0 && i + 1 < argc) {
            const char *m = argv[++i];
            if (strcmp(m, "linked") == 0) {
#ifdef DILU_APP_LINKED
                mode = RESOLVE_LINKED;
#else
                die("--resolve linked needs the linked build (cuda_app_linked)");
#endif
            } else if (strcmp(m, "dlsym") == 0) {
                mode = RESOLVE_DLSYM;
            } else if (strcmp(m, "procaddr") == 0) {
                mode = RESOLVE_PROCADDR;
            } else {
                die("unknown --resolve mode '%s' (linked, dlsym or procaddr)", m);
            }
        } else if (strcmp(a, "--ptds") == 0) {
            ptds = true;
        } else if (strcmp(a, "--stream") == 0 && i + 1 < argc) {
            const char *s = argv[++i];
            if (strcmp(s, "default") == 0) {
                created_stream = false;
            } else if (strcmp(s, "created") == 0) {
                created_stream = true;
            } else {
                die("unknown --stream '%s' (default or created)", s);
            }
        } else if (strcmp(a, "--device") == 0 && i + 1 < argc) {
            device = (int)parse_u32("--device", argv[++i]);
        } else if (strncmp(a, "--", 2) == 0) {
            die("unknown or incomplete option '%s'", a);
        } else {
            break;
        }
    }

    switch (mode) {
    case RESOLVE_LINKED:
#ifdef DILU_APP_LINKED
        resolve_linked(ptds);
#endif
        break;
    case RESOLVE_DLSYM:
        resolve_dlsym(ptds);
        break;
    case RESOLVE_PROCADDR:
        resolve_procaddr(ptds);
        break;
    }

    CUresult rc;
    CUcontext ctx = NULL;
    CUmodule mod = NULL;
    static const char image[] = "dilu fake cubin";
    if ((rc = api.cuInit(0)) != CUDA_SUCCESS) die("cuInit failed: %d %s", (int)rc, err_name(rc));
    if ((rc = api.cuDeviceGet(&g_dev, device)) != CUDA_SUCCESS)
        die("cuDeviceGet(%d) failed: %d %s", device, (int)rc, err_name(rc));
    if ((rc = api.cuCtxCreate(&ctx, 0, g_dev)) != CUDA_SUCCESS)
        die("cuCtxCreate failed: %d %s", (int)rc, err_name(rc));
    if ((rc = api.cuModuleLoadData(&mod, image)) != CUDA_SUCCESS)
        die("cuModuleLoadData failed: %d %s", (int)rc, err_name(rc));
    if ((rc = api.cuModuleGetFunction(&g_func, mod, "dilu_test_kernel")) != CUDA_SUCCESS)
        die("cuModuleGetFunction failed: %d %s", (int)rc, err_name(rc));
    if (created_stream && (rc = api.cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING)) != CUDA_SUCCESS)
        die("cuStreamCreate failed: %d %s", (int)rc, err_name(rc));

    for (; i < argc; i++) {
        run_command(argv[i]);
    }
    return 0;
}
