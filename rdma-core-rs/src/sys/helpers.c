// SPDX-License-Identifier: GPL-2.0
/*
 * Callable forms of the kernel's static inline RDMA functions; see tilde_rdma.h.
 */
#include "tilde_rdma.h"

u32 tilde_rdma_start_port(const struct ib_device *device)
{
	return rdma_start_port(device);
}

u32 tilde_rdma_end_port(const struct ib_device *device)
{
	return rdma_end_port(device);
}
