/* Benchmark tooling, not product code: an LD_PRELOAD shim that makes this disk's fsync slow.
 *
 * Every fsync, fdatasync, sync_file_range and msync(MS_SYNC) first sleeps SLOW_FSYNC_MS
 * milliseconds (default 2; 0 only counts), then calls the real one: what a commit costs on a
 * cloud volume whose flush takes milliseconds, on a disk where it takes ~0.1 ms. SQLite (WAL,
 * synchronous=FULL) flushes with fdatasync. With SLOW_FSYNC_COUNT_TO=FILE, each process
 * appends "<pid> <flushes>" to FILE when it exits, so a run can report deliveries per flush.
 * Built by tests/bench/slow_fsync.py:
 *   gcc -O2 -shared -fPIC -o slow_fsync.so slow_fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static struct timespec delay = {0, 2000000};
static unsigned long flushes;

__attribute__((constructor)) static void read_delay(void) {
    const char *text = getenv("SLOW_FSYNC_MS");
    if (text != NULL) {
        double ms = strtod(text, NULL);
        if (ms < 0) ms = 0;
        long long ns = (long long)(ms * 1e6);
        delay.tv_sec = (time_t)(ns / 1000000000LL);
        delay.tv_nsec = (long)(ns % 1000000000LL);
    }
}

__attribute__((destructor)) static void write_count(void) {
    const char *path = getenv("SLOW_FSYNC_COUNT_TO");
    if (path == NULL) return;
    FILE *out = fopen(path, "a");
    if (out == NULL) return;
    fprintf(out, "%ld %lu\n", (long)getpid(), __atomic_load_n(&flushes, __ATOMIC_RELAXED));
    fclose(out);
}

/* Sleep the whole delay even if a signal interrupts it, and leave errno as it was. */
static void slow_down(void) {
    __atomic_fetch_add(&flushes, 1, __ATOMIC_RELAXED);
    if (delay.tv_sec == 0 && delay.tv_nsec == 0) return;
    int saved = errno;
    struct timespec left = delay;
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &left, &left) == EINTR) {
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (real == NULL)
        real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    /* Only a range write that waits for the data is a flush; a bare start-writeback is not. */
    if (flags & SYNC_FILE_RANGE_WAIT_AFTER) slow_down();
    return real(fd, offset, nbytes, flags);
}

int msync(void *address, size_t length, int flags) {
    static int (*real)(void *, size_t, int);
    if (real == NULL) real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    if (flags & MS_SYNC) slow_down();
    return real(address, length, flags);
}
