/* Temporary outputs that a terminating signal removes: a fixed table of registered paths (a
 * file, or a directory tree of our outputs), and the creation of registered temporaries with
 * the cleanup signals blocked in between, so that an interruption never leaves one
 * unregistered. Internal. */
#ifndef NF_TMPREG_H
#define NF_TMPREG_H

#include <signal.h>
#include <sys/types.h>

/* Removes every temporary output still registered in this process; async-signal-safe, for a
 * program's handler of SIGINT, SIGTERM and the other terminating signals. */
void nf_tmp_cleanup_signal(void);
/* Adds or removes a path (file, or directory tree of our outputs) to what the handler
 * removes. nf_tmp_register returns its slot, or -1 when the table is full. */
int nf_tmp_register(const char *path, int is_dir);
void nf_tmp_unregister(const char *path);
/* Creates tmpl, a template ending in XXXXXX (a directory by mkdtemp when is_dir, else a file by
 * mkostemp, mode 0666 less the umask, its descriptor in *fd), and registers it. NF_OK;
 * NF_E_IO when it cannot be created (errno set); NF_E_LIMIT when the table is full (nothing
 * is left behind). */
int nf_tmp_create(char *tmpl, int is_dir, int *fd);
/* mkdtemp(tmpl) registered: tmpl, or NULL (errno set; EMFILE when the table is full). */
char *nf_tmp_mkdtemp(char *tmpl);
/* The same for a file: mkostemp(tmpl) registered, mode 0666 less the umask; fd or -1. */
int nf_tmp_mkstemp(char *tmpl);
/* "DIR/.NAME.nufilt-XXXXXX" beside path (malloc'd), for nf_tmp_mkstemp / nf_tmp_mkdtemp. */
char *nf_tmp_template(const char *path);
/* Blocks the signals whose handler removes temporaries, the old mask in *old, for a caller
 * that creates and registers a temporary of its own; nf_tmp_restore_signals undoes it. */
void nf_tmp_block_signals(sigset_t *old);
void nf_tmp_restore_signals(const sigset_t *old);
/* The process's umask, read without changing it. */
mode_t nf_current_umask(void);

#endif
