// SPDX-License-Identifier: GPL-2.0
/* The self-test's WARN, in C: see warn_selftest.rs. */
#include <linux/bug.h>
#include <linux/module.h>

MODULE_AUTHOR("tilde developers");

void tilde_warn_selftest_warn(void);

void tilde_warn_selftest_warn(void)
{
	WARN_ON(1);
}
