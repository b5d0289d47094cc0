/* A software NVML (libnvidia-ml.so.1) for tests: the subset the Dilu agent calls to discover GPUs and to
 * watch their health, against devices described in the environment.
 *
 *   DILU_FAKE_NVML_DEVICES  devices separated by ';', each "uuid,name,memory MiB,SMs[,noevents]"
 *                           ("noevents": the device does not support event registration)
 *   DILU_FAKE_NVML_INIT     the nvmlReturn_t nvmlInit_v2 returns (default 0: success)
 *   DILU_FAKE_NVML_CONTROL  a file the test appends lines to while the library runs:
 *                             "xid <uuid> <n>"  the device reports Xid error n (a critical-Xid event)
 *                             "lost <uuid>"     the device falls off the bus (calls on it: GPU_IS_LOST)
 *                             "back <uuid>"     the device answers again
 *
 * Only the layout of nvml.h's public types and the documented return codes are reproduced. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
};

#define XID_CRITICAL_ERROR 0x8ULL
#define MAX_DEVICES 8
#define MAX_EVENTS 64

typedef struct {
    char uuid[96];
    char name[96];
    unsigned long long memory;
    unsigned int sms;
    int events_supported;
    int lost;
} fake_device;

typedef fake_device *nvmlDevice_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

typedef struct {
    unsigned long long registered[MAX_DEVICES];
    int lost_reported[MAX_DEVICES];
} fake_set;

typedef fake_set *nvmlEventSet_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fake_device devices[MAX_DEVICES];
static unsigned int device_count;
static int initialised;
static long control_offset;
static struct {
    unsigned int device;
    unsigned long long xid;
} queue[MAX_EVENTS];
static unsigned int queue_len;

static int device_index(const fake_device *device) {
    for (unsigned int i = 0; i < device_count; i++) {
        if (&devices[i] == device) return (int)i;
    }
    return -1;
}

static int find_uuid(const char *uuid) {
    for (unsigned int i = 0; i < device_count; i++) {
        if (strcmp(devices[i].uuid, uuid) == 0) return (int)i;
    }
    return -1;
}

static void copy_field(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src ? src : "");
}

static void parse_devices(void) {
    device_count = 0;
    const char *spec = getenv("DILU_FAKE_NVML_DEVICES");
    if (!spec) return;
    char *copy = strdup(spec);
    if (!copy) return;
    char *save_device = NULL;
    for (char *item = strtok_r(copy, ";", &save_device); item && device_count < MAX_DEVICES;
         item = strtok_r(NULL, ";", &save_device)) {
        char *save_field = NULL;
        char *uuid = strtok_r(item, ",", &save_field);
        char *name = strtok_r(NULL, ",", &save_field);
        char *mib = strtok_r(NULL, ",", &save_field);
        char *sms = strtok_r(NULL, ",", &save_field);
        char *flag = strtok_r(NULL, ",", &save_field);
        if (!uuid || !name || !mib || !sms) continue;
        fake_device *d = &devices[device_count++];
        memset(d, 0, sizeof *d);
        copy_field(d->uuid, sizeof d->uuid, uuid);
        copy_field(d->name, sizeof d->name, name);
        d->memory = strtoull(mib, NULL, 10) << 20;
        d->sms = (unsigned int)strtoul(sms, NULL, 10);
        d->events_supported = !(flag && strcmp(flag, "noevents") == 0);
    }
    free(copy);
}

/* Applies the control file's complete lines not yet read. Called with the lock held. */
static void pump(void) {
    const char *path = getenv("DILU_FAKE_NVML_CONTROL");
    if (!path) return;
    FILE *file = fopen(path, "r");
    if (!file) return;
    if (fseek(file, control_offset, SEEK_SET) != 0) {
        fclose(file);
        return;
    }
    char line[256];
    while (fgets(line, sizeof line, file)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') break; /* a line still being written */
        control_offset += (long)len;
        char verb[16], uuid[96];
        unsigned long long xid = 0;
        int fields = sscanf(line, "%15s %95s %llu", verb, uuid, &xid);
        if (fields < 2) continue;
        int index = find_uuid(uuid);
        if (index < 0) continue;
        if (strcmp(verb, "xid") == 0 && fields == 3 && queue_len < MAX_EVENTS) {
            queue[queue_len].device = (unsigned int)index;
            queue[queue_len].xid = xid;
            queue_len++;
        } else if (strcmp(verb, "lost") == 0) {
            devices[index].lost = 1;
        } else if (strcmp(verb, "back") == 0) {
            devices[index].lost = 0;
        }
    }
    fclose(file);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    const char *forced = getenv("DILU_FAKE_NVML_INIT");
    if (forced && atoi(forced) != 0) return atoi(forced);
    pthread_mutex_lock(&lock);
    if (initialised++ == 0) {
        parse_devices();
        control_offset = 0;
        queue_len = 0;
    }
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = initialised > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (initialised > 0) initialised--;
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case 9: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *count = device_count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!device || index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *device = &devices[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    pthread_mutex_lock(&lock);
    pump();
    int index = find_uuid(uuid);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (index < 0) {
        rc = NVML_ERROR_NOT_FOUND;
    } else if (devices[index].lost) {
        rc = NVML_ERROR_GPU_IS_LOST;
    } else {
        *device = &devices[index];
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static nvmlReturn_t get_string(nvmlDevice_t device, const char *value, char *out, unsigned int size) {
    if (!out || device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->lost) return NVML_ERROR_GPU_IS_LOST;
    if (strlen(value) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int size) {
    if (device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    return get_string(device, device->uuid, uuid, size);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int size) {
    if (device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    return get_string(device, device->name, name, size);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (!memory || device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->lost) return NVML_ERROR_GPU_IS_LOST;
    memory->total = device->memory;
    memory->used = 0;
    memory->free = device->memory;
    return NVML_SUCCESS;
}

/* nvmlDeviceAttributes_t: only its first field, multiprocessorCount, is filled. */
EXPORT nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, void *attributes) {
    if (!attributes || device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->lost) return NVML_ERROR_GPU_IS_LOST;
    memcpy(attributes, &device->sms, sizeof device->sms);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    if (!types || device_index(device) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *types = device->events_supported ? XID_CRITICAL_ERROR : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *set = calloc(1, sizeof(fake_set));
    return *set ? NVML_SUCCESS : 999;
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                             nvmlEventSet_t set) {
    int index = device_index(device);
    if (!set || index < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->events_supported) return NVML_ERROR_NOT_SUPPORTED;
    if (types & ~XID_CRITICAL_ERROR) return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&lock);
    set->registered[index] |= types;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

/* Waits up to timeout_ms for an event of a device registered with the set. A registered device that fell off
 * the bus is reported once as GPU_IS_LOST. */
EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        pthread_mutex_lock(&lock);
        pump();
        for (unsigned int i = 0; i < device_count; i++) {
            if (set->registered[i] && devices[i].lost && !set->lost_reported[i]) {
                set->lost_reported[i] = 1;
                pthread_mutex_unlock(&lock);
                return NVML_ERROR_GPU_IS_LOST;
            }
            if (!devices[i].lost) set->lost_reported[i] = 0;
        }
        for (unsigned int k = 0; k < queue_len; k++) {
            unsigned int index = queue[k].device;
            if (!(set->registered[index] & XID_CRITICAL_ERROR)) continue;
            memset(data, 0, sizeof *data);
            data->device = &devices[index];
            data->eventType = XID_CRITICAL_ERROR;
            data->eventData = queue[k].xid;
            data->gpuInstanceId = 0xFFFFFFFFu;
            data->computeInstanceId = 0xFFFFFFFFu;
            memmove(&queue[k], &queue[k + 1], (queue_len - k - 1) * sizeof queue[0]);
            queue_len--;
            pthread_mutex_unlock(&lock);
            return NVML_SUCCESS;
        }
        pthread_mutex_unlock(&lock);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long waited_ms = (now.tv_sec - start.tv_sec) * 1000LL + (now.tv_nsec - start.tv_nsec) / 1000000LL;
        if (waited_ms >= (long long)timeout_ms) return NVML_ERROR_TIMEOUT;
        struct timespec pause = {0, 2 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}
