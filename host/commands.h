/* The subcommands of the nufilt program. Each returns the process exit status. */
#ifndef NFH_COMMANDS_H
#define NFH_COMMANDS_H

#include <signal.h>

#include "args.h"

/* Set by the signal handler once it has removed the temporaries: errors that other threads
 * meet afterwards (their files are gone) are not printed. */
extern volatile sig_atomic_t cli_stopping;

int cmd_step(cli *c);
int cmd_merge(cli *c);
int cmd_inspect(cli *c);
int cmd_methods(void);
int cmd_devices(void);

#endif
