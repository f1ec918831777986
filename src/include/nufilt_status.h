/* nufilt status codes: one list, from which the enum, names and messages are generated. */
#ifndef NUFILT_STATUS_H
#define NUFILT_STATUS_H

/* X(enum name, value, short message) */
#define NF_STATUS_LIST(X)                                                          \
    X(NF_OK, 0, "success")                                                         \
    X(NF_E_NOMEM, -1, "out of memory")                                             \
    X(NF_E_IO, -2, "input/output error")                                           \
    X(NF_E_FORMAT, -3, "malformed checkpoint")                                     \
    X(NF_E_MISMATCH, -4, "models do not match")                                    \
    X(NF_E_ARG, -5, "invalid argument")                                            \
    X(NF_E_EXISTS, -6, "output already exists")                                    \
    X(NF_E_UNSUPPORTED, -7, "operation not supported")                             \
    X(NF_E_DEVICE, -8, "compute device error")                                     \
    X(NF_E_NUMERIC, -9, "numerical failure")                                       \
    X(NF_E_STATE, -10, "merge state conflict")                                     \
    X(NF_E_NONFINITE, -11, "non-finite values (NaN or Inf)")                        \
    X(NF_E_NODEV, -12, "no such device or driver")                                 \
    X(NF_E_LIMIT, -13, "resource limit exceeded")                                  \
    X(NF_E_INTERNAL, -14, "internal error")                                     \
    X(NF_E_CANCELLED, -15, "cancelled")

#define NF_STATUS_ENUM_(name, value, msg) name = value,
typedef enum nf_status { NF_STATUS_LIST(NF_STATUS_ENUM_) } nf_status;
#undef NF_STATUS_ENUM_

#endif
