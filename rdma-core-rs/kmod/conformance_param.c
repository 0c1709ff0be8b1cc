// SPDX-License-Identifier: GPL-2.0
/*
 * The conformance suite's `device` parameter. Kernel 7.2's Rust `module!` takes integer
 * parameters only (rust/macros/module.rs, param_ops_path), and the suite is told which
 * RDMA device to test by name, so the parameter is a charp declared here.
 */

#include <linux/moduleparam.h>

static char *device = "rxe0";
module_param(device, charp, 0444);
MODULE_PARM_DESC(device, "name of the RDMA device to run the verbs conformance suite on");

const char *tilde_conformance_device(void);

/* The device name given at load time (or the default); valid while the module is loaded. */
const char *tilde_conformance_device(void)
{
	return device;
}
