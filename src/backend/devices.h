/* Opening the devices a run asks for (--device). Internal. */
#ifndef NF_DEVICES_H
#define NF_DEVICES_H

#include "backend.h"

/* spec: "auto" or a comma-separated list of api[:index] ("vulkan:0,opencl:0,cpu"). */
int nf_devices_open(const char *spec, nf_device ***devs, int *ndev, nf_error *err);
void nf_devices_close(nf_device **devs, int n);

#endif
