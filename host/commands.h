/* The subcommands of the nufilt program. Each returns the process exit status. */
#ifndef NFH_COMMANDS_H
#define NFH_COMMANDS_H

#include "args.h"

int cmd_step(cli *c);
int cmd_merge(cli *c);
int cmd_inspect(cli *c);
int cmd_methods(void);
int cmd_devices(void);

#endif
