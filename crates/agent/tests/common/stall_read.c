/* An LD_PRELOAD shim for the live tests: a step of ctune that hangs, as one does on a
 * read of /proc that never returns. While the file named by CTUNE_STALL_FLAG exists,
 * every pread of a file whose path ends in CTUNE_STALL_SUFFIX waits (at most two
 * minutes) until it is removed. ctune reads its sysctls through descriptors it keeps
 * open, with pread64 (Rust's read_at), so this catches the step's read of that key. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static void stall(int fd) {
    const char *flag = getenv("CTUNE_STALL_FLAG"), *suffix = getenv("CTUNE_STALL_SUFFIX");
    if (!flag || !suffix || access(flag, F_OK) != 0) return;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return;
    path[n] = 0;
    size_t t = strlen(suffix);
    if ((size_t)n < t || strcmp(path + n - t, suffix) != 0) return;
    for (int i = 0; i < 2400 && access(flag, F_OK) == 0; i++) usleep(50000);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread64");
    stall(fd);
    return real(fd, buf, count, offset);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread");
    stall(fd);
    return real(fd, buf, count, offset);
}
