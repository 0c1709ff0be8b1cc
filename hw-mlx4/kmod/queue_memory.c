// SPDX-License-Identifier: GPL-2.0
/*
 * Queue memory for tilde_mlx4's fast path (hw-mlx4/kmod/platform.rs): zeroed, physically
 * contiguous, aligned to its power-of-two size (kmalloc's guarantee for such sizes).
 * The kmalloc family are macros and inlines on current kernels, hence C.
 */

#include <linux/slab.h>

/* Called from Rust only; declared for -Wmissing-prototypes. */
void *tilde_mlx4_queue_alloc(size_t size);
void tilde_mlx4_queue_free(void *cpu);

void *tilde_mlx4_queue_alloc(size_t size)
{
	return kzalloc(size, GFP_KERNEL);
}

void tilde_mlx4_queue_free(void *cpu)
{
	kfree(cpu);
}
