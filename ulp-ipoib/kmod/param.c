// SPDX-License-Identifier: GPL-2.0
/*
 * tilde_ipoib's parameters and module metadata, in C: Rust's `module!` differs between
 * the kernels tilde targets (6.12's takes no parameters, 7.2's integers only, and the
 * author field is spelled differently).
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

MODULE_AUTHOR("tilde developers");

static char *port = "";
module_param(port, charp, 0444);
MODULE_PARM_DESC(port, "the one port to make an interface on, as DEVICE:PORT (mlx4_0:1); empty: every InfiniBand port of every device");

bool tilde_ipoib_port_wanted(const char *device, size_t len, u32 port_num);

/* Whether the port `port_num` of the device named `device` (`len` bytes) gets an interface. */
bool tilde_ipoib_port_wanted(const char *device, size_t len, u32 port_num)
{
	const char *colon;
	unsigned int wanted;

	if (!*port)
		return true;
	colon = strrchr(port, ':');
	if (!colon || colon - port != len || memcmp(port, device, len))
		return false;
	if (kstrtouint(colon + 1, 10, &wanted))
		return false;
	return wanted == port_num;
}

static bool connected_mode = true;
module_param(connected_mode, bool, 0444);
MODULE_PARM_DESC(connected_mode, "offer connected mode (RFC 4755), as ib_ipoib does: the connected-mode flag in the address, an IB CM listener, and \"connected\" accepted by /sys/class/net/<if>/mode (default: on; off: datagram mode only)");

bool tilde_ipoib_connected_mode(void);

bool tilde_ipoib_connected_mode(void)
{
	return connected_mode;
}
