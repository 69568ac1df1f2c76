/* Linked into the portable wheel's extension module by tests/python/build-wheel.sh.
 *
 * C dependencies (SQLite) are compiled against the build machine's glibc headers, which since
 * glibc 2.28 turn calls to fcntl() into calls to fcntl64(), a symbol that older glibc does not
 * have: the module would fail to load there ("undefined symbol: fcntl64"). On 64-bit Linux
 * fcntl64 is the same function as fcntl (glibc defines one as an alias of the other), so this
 * definition forwards to fcntl, which every glibc has. It is hidden: the module still exports
 * nothing but its PyInit function. */
#include <stdarg.h>

int fcntl(int fd, int cmd, ...);

__attribute__((visibility("hidden"))) int fcntl64(int fd, int cmd, ...) {
    va_list args;
    va_start(args, cmd);
    /* As glibc's own fcntl does: the optional argument is read as one pointer-sized word. */
    void *arg = va_arg(args, void *);
    va_end(args);
    return fcntl(fd, cmd, arg);
}
