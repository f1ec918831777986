/* The registry of temporary outputs: the paths a terminating signal's handler removes (a
 * fixed table, walked without locks or allocation), and the creation of registered
 * temporaries with the cleanup signals blocked in between. */
#include "tmpreg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nufilt.h"
#include "../core/util.h"


/* Temporary paths to remove if the process is interrupted: a fixed table so that a signal
 * handler can walk it without locks or allocation. */
#define MAX_TMP 64
static char tmp_paths[MAX_TMP][PATH_MAX];
static volatile sig_atomic_t tmp_is_dir[MAX_TMP];
static volatile sig_atomic_t tmp_used[MAX_TMP];
static pthread_mutex_t tmp_lock = PTHREAD_MUTEX_INITIALIZER;

int nf_tmp_register(const char *path, int is_dir)
{
    pthread_mutex_lock(&tmp_lock);
    int slot = -1;
    for (int i = 0; i < MAX_TMP && slot < 0; i++)
        if (!tmp_used[i])
            slot = i;
    if (slot >= 0 && strlen(path) < PATH_MAX) {
        strcpy(tmp_paths[slot], path);
        tmp_is_dir[slot] = is_dir;
        /* the path is complete before a handler can see the slot in use */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        tmp_used[slot] = 1;
    } else {
        slot = -1;
    }
    pthread_mutex_unlock(&tmp_lock);
    return slot;
}

void nf_tmp_unregister(const char *path)
{
    pthread_mutex_lock(&tmp_lock);
    for (int i = 0; i < MAX_TMP; i++)
        if (tmp_used[i] && strcmp(tmp_paths[i], path) == 0)
            tmp_used[i] = 0;
    pthread_mutex_unlock(&tmp_lock);
}

/* The process's umask, read without changing it (umask(2) can only set it, which would race
 * with other threads creating files). mkstemp and mkdtemp create 0600 and 0700; outputs get
 * the modes an ordinary file or directory would. */
mode_t nf_current_umask(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    unsigned mask = 022;
    if (f) {
        char line[128];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Umask: %o", &mask) == 1)
                break;
        fclose(f);
    }
    return (mode_t)(mask & 0777);
}

/* Blocks the signals whose handler removes temporaries (every asynchronous one a program may
 * catch: SIGINT, SIGTERM, SIGQUIT, SIGALRM, SIGUSR1, ...), so that a temporary is never
 * created without being registered (or removed without being unregistered). Faults (SIGBUS,
 * SIGSEGV, SIGILL, SIGFPE) stay unblocked: blocking them would kill without a handler. */
void nf_tmp_block_signals(sigset_t *old)
{
    sigset_t set;
    sigfillset(&set);
    sigdelset(&set, SIGBUS);
    sigdelset(&set, SIGSEGV);
    sigdelset(&set, SIGILL);
    sigdelset(&set, SIGFPE);
    sigdelset(&set, SIGTRAP);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

void nf_tmp_restore_signals(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

int nf_tmp_create(char *tmpl, int is_dir, int *fd)
{
    sigset_t oldmask;
    nf_tmp_block_signals(&oldmask);
    int f = -1, made = is_dir ? mkdtemp(tmpl) != NULL : (f = mkostemp(tmpl, O_CLOEXEC)) >= 0;
    int e = errno, rc = made ? NF_OK : NF_E_IO;
    if (made && nf_tmp_register(tmpl, is_dir) < 0) {
        if (is_dir) {
            rmdir(tmpl);
        } else {
            close(f);
            unlink(tmpl);
            f = -1;
        }
        rc = NF_E_LIMIT;
    }
    nf_tmp_restore_signals(&oldmask);
    if (f >= 0)
        fchmod(f, 0666 & ~nf_current_umask());
    if (fd)
        *fd = f;
    else if (f >= 0)
        close(f);
    errno = e;
    return rc;
}

char *nf_tmp_mkdtemp(char *tmpl)
{
    int rc = nf_tmp_create(tmpl, 1, NULL);
    if (rc == NF_E_LIMIT)
        errno = EMFILE;
    return rc == NF_OK ? tmpl : NULL;
}

int nf_tmp_mkstemp(char *tmpl)
{
    int fd = -1, rc = nf_tmp_create(tmpl, 0, &fd);
    if (rc == NF_E_LIMIT)
        errno = EMFILE;
    return fd;
}

char *nf_tmp_template(const char *out)
{
    char *dir = nf_path_dir(out);
    size_t len, s = nf_path_last(out, &len);
    char *stem = nf_strndup(out + s, len);
    char *res = NULL;
    if (dir && stem) {
        nf_sb sb = {0};
        nf_sb_printf(&sb, "%s/.%s.nufilt-XXXXXX", dir, stem);
        res = sb.oom ? NULL : sb.s;
        if (!res)
            nf_sb_free(&sb);
    }
    free(dir);
    free(stem);
    return res;
}

/* Empties the directory open as dfd: its files, and its subdirectories (depth levels deep)
 * with theirs. Async-signal-safe: the raw getdents64 system call into a buffer on the stack,
 * no allocation (fdopendir and readdir allocate, and a handler interrupting malloc would
 * deadlock); symbolic links are removed, never followed. */
struct nf_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static void clear_dir_signal_safe(int dfd, int depth)
{
    _Alignas(8) char buf[2048];
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n <= 0)
            return;
        int removed = 0;
        for (long off = 0; off < n;) {
            const struct nf_dirent64 *d = (const void *)(buf + off);
            off += d->d_reclen;
            const char *nm = d->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
                continue;
            if (unlinkat(dfd, nm, 0) == 0) {
                removed = 1;
                continue;
            }
            if (depth > 0) {
                int sub = openat(dfd, nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0) {
                    clear_dir_signal_safe(sub, depth - 1);
                    close(sub);
                    if (unlinkat(dfd, nm, AT_REMOVEDIR) == 0)
                        removed = 1;
                }
            }
        }
        /* entries removed while listing may make the listing skip others: start again */
        if (removed)
            lseek(dfd, 0, SEEK_SET);
    }
}

void nf_tmp_cleanup_signal(void)
{
    int saved = errno;
    for (int i = 0; i < MAX_TMP; i++) {
        if (!tmp_used[i])
            continue;
        if (tmp_is_dir[i]) {
            /* outputs are directory trees (the base's subfolders copied); a merge's scratch
             * directory holds outputs. The other threads run on while this handler does:
             * a worker may create a shard file, or a step commit its output, in the
             * directory after it was emptied, so it is emptied again until it can be removed
             * (a removed directory takes no new files). output_safety's signal cases left
             * a scratch directory about one run in five with a single pass. */
            for (int tries = 0; tries < 100; tries++) {
                int fd = open(tmp_paths[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (fd >= 0) {
                    clear_dir_signal_safe(fd, NF_REMOVE_TREE_DEPTH);
                    close(fd);
                }
                if (rmdir(tmp_paths[i]) == 0 || (errno != ENOTEMPTY && errno != EEXIST))
                    break;
            }
        } else {
            unlink(tmp_paths[i]);
        }
        tmp_used[i] = 0;
    }
    errno = saved;
}

void nf_cleanup_temporaries(void) { nf_tmp_cleanup_signal(); }
