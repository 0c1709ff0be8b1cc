/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The target kernel's RDMA API as tilde sees it: bindgen reads this header with the
 * kernel's own flags (see `cargo xtask kmod`), so the bindings always match the headers of
 * the kernel the module is built for.
 *
 * The kernel's static inline functions have no symbol a Rust module can call; each one
 * tilde needs gets a `tilde_`-prefixed wrapper here, defined in helpers.c and linked into
 * the module (the same scheme as the kernel's own rust/helpers).
 */
#ifndef TILDE_RDMA_H
#define TILDE_RDMA_H

#include <rdma/ib_verbs.h>
#include <rdma/rdma_cm.h>

u32 tilde_rdma_start_port(const struct ib_device *device);
u32 tilde_rdma_end_port(const struct ib_device *device);

#endif
