// SPDX-License-Identifier: GPL-2.0
/*
 * Exports the rdma_core crate from tilde_core.ko, the way rust/exports.c exports the
 * kernel crate from vmlinux: every global symbol of rdma_core's objects, listed by nm at
 * build time (see Kbuild). Other tilde modules are compiled against rdma_core's crate
 * metadata and link to these exports, so the crate is compiled and loaded once. The
 * carried crates.io crates and, on a kernel built without Rust, the kernel's Rust runtime
 * are exported the same way. Under MODVERSIONS kbuild runs this file through genksyms,
 * which gives each export the CRC of its placeholder declaration below
 * (docs/debian-stock-kernel.md).
 */

#include <linux/export.h>
#include <linux/module.h>

/* tilde_core's author, declared in C: the kernels' Rust `module!` disagree on the field. */
MODULE_AUTHOR("tilde developers");

#define EXPORT_SYMBOL_RUST_GPL(sym) extern int sym; EXPORT_SYMBOL_GPL(sym)

#include "exports_rdma_core_generated.h"
