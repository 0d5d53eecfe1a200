/* An LD_PRELOAD shim for the live tests: ctune sees a kernel without
 * /proc/net/stat/nf_conntrack (CONFIG_NF_CONNTRACK_PROCFS off, as in Ubuntu's and
 * OpenWrt's kernels) while the rest of /proc is real. Every open of a path ending in
 * "net/stat/nf_conntrack" fails with the errno in CTUNE_SHIM_ERRNO (default ENOENT:
 * absent; EACCES: unreadable). glibc's own internal opens do not pass through here,
 * but Rust's std calls open64/openat64 through the dynamic symbol table, so every
 * open ctune makes does. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int hidden(const char *path) {
    static const char tail[] = "net/stat/nf_conntrack";
    size_t n = path ? strlen(path) : 0, t = sizeof(tail) - 1;
    return n >= t && strcmp(path + n - t, tail) == 0;
}

static int refuse(void) {
    const char *e = getenv("CTUNE_SHIM_ERRNO");
    errno = e ? atoi(e) : ENOENT;
    return -1;
}

#define SHIM(name, ...)                                                        \
    int name(__VA_ARGS__, int flags, ...) {                                    \
        mode_t mode = 0;                                                       \
        if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {           \
            va_list ap;                                                        \
            va_start(ap, flags);                                               \
            mode = va_arg(ap, mode_t);                                         \
            va_end(ap);                                                        \
        }

SHIM(open, const char *path)
    static int (*real)(const char *, int, ...);
    if (hidden(path)) return refuse();
    if (!real) real = dlsym(RTLD_NEXT, "open");
    return real(path, flags, mode);
}

SHIM(open64, const char *path)
    static int (*real)(const char *, int, ...);
    if (hidden(path)) return refuse();
    if (!real) real = dlsym(RTLD_NEXT, "open64");
    return real(path, flags, mode);
}

SHIM(openat, int dir, const char *path)
    static int (*real)(int, const char *, int, ...);
    if (hidden(path)) return refuse();
    if (!real) real = dlsym(RTLD_NEXT, "openat");
    return real(dir, path, flags, mode);
}

SHIM(openat64, int dir, const char *path)
    static int (*real)(int, const char *, int, ...);
    if (hidden(path)) return refuse();
    if (!real) real = dlsym(RTLD_NEXT, "openat64");
    return real(dir, path, flags, mode);
}
