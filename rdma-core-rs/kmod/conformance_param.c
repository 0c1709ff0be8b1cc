// SPDX-License-Identifier: GPL-2.0
/*
 * The conformance suite's parameters. Rust's `module!` differs between the kernels tilde
 * targets (6.12's takes none; 7.2's integers only), and the suite is told which RDMA
 * device to test by name: every parameter is declared here, where all kernels agree.
 */

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/inet.h>
#include <linux/string.h>

MODULE_AUTHOR("tilde developers");

static char *device = "rxe0";
module_param(device, charp, 0444);
MODULE_PARM_DESC(device, "name of the RDMA device to run the verbs conformance suite on");

bool tilde_conformance_device_is(const char *name, size_t len);
const char *tilde_conformance_device(void);

/* The `device` parameter, NUL-terminated; read-only, so it lives as long as the module. */
const char *tilde_conformance_device(void)
{
	return device;
}

/* Whether `name` (`len` bytes, not NUL-terminated) is the device given at load time. */
bool tilde_conformance_device_is(const char *name, size_t len)
{
	return strlen(device) == len && !memcmp(device, name, len);
}

static unsigned int bench;
module_param(bench, uint, 0444);
MODULE_PARM_DESC(bench, "0 runs the conformance cases; N runs the safe-vs-raw benchmark with N operations per loop instead");

static bool traffic;
module_param(traffic, bool, 0444);
MODULE_PARM_DESC(traffic, "1 runs no cases but keeps RC traffic going on the device until it is removed or the module unloaded");

static bool cases = true;
module_param(cases, bool, 0444);
MODULE_PARM_DESC(cases, "0 runs no cases: the module only makes the objects its create parameter is given");

bool tilde_conformance_cases(void);

bool tilde_conformance_cases(void)
{
	return cases;
}

int tilde_conformance_create(unsigned int path);

/* The object paths of fault_paths.rs, in its order. */
static const char *const create_paths[] = { "pd", "cq", "qp", "mr", "ah", "cm_id", NULL };

static int create_set(const char *val, const struct kernel_param *kp)
{
	size_t len = strcspn(val, "\n");
	unsigned int i;

	for (i = 0; create_paths[i]; i++)
		if (strlen(create_paths[i]) == len && !memcmp(create_paths[i], val, len))
			return tilde_conformance_create(i);
	return -EINVAL;
}

static const struct kernel_param_ops create_ops = {
	.set = create_set,
};
module_param_cb(create, &create_ops, NULL, 0200);
MODULE_PARM_DESC(create, "write pd, cq, qp, mr, ah or cm_id: makes that object (with the PD and CQ it needs) on the device under test and destroys it again, in the writing task, for fault injection; the write returns the path's error");

static char *cm_addr = "";
module_param(cm_addr, charp, 0444);
MODULE_PARM_DESC(cm_addr, "IPv4 address of the port's IPoIB interface, which the RDMA CM cases connect to on an InfiniBand port (a RoCE port has its addresses in the GID table)");

unsigned int tilde_conformance_bench(void);
bool tilde_conformance_traffic(void);
bool tilde_conformance_cm_addr(u8 addr[4]);

/* The `cm_addr` parameter into `addr` (network order); false if unset or not IPv4. */
bool tilde_conformance_cm_addr(u8 addr[4])
{
	return *cm_addr && in4_pton(cm_addr, -1, addr, -1, NULL) == 1;
}

unsigned int tilde_conformance_bench(void)
{
	return bench;
}

bool tilde_conformance_traffic(void)
{
	return traffic;
}

/*
 * Pages for the scatterlist cases (sg_region.rs): `n` pages, each a scatterlist entry,
 * as a SCSI command's data would come.
 */
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>

struct scatterlist *tilde_conformance_pages_alloc(unsigned int n);
void tilde_conformance_pages_free(struct scatterlist *sgl, unsigned int n);
const u8 *tilde_conformance_page_address(struct scatterlist *sgl, unsigned int i);
struct page *tilde_conformance_page(struct scatterlist *sgl, unsigned int i);

struct scatterlist *tilde_conformance_pages_alloc(unsigned int n)
{
	struct scatterlist *sgl = kcalloc(n, sizeof(*sgl), GFP_KERNEL);
	unsigned int i;

	if (!sgl)
		return NULL;
	sg_init_table(sgl, n);
	for (i = 0; i < n; i++) {
		struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);

		if (!page) {
			tilde_conformance_pages_free(sgl, i);
			return NULL;
		}
		sg_set_page(&sgl[i], page, PAGE_SIZE, 0);
	}
	return sgl;
}

/* Frees the first `n` pages and the list. */
void tilde_conformance_pages_free(struct scatterlist *sgl, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		__free_page(sg_page(&sgl[i]));
	kfree(sgl);
}

const u8 *tilde_conformance_page_address(struct scatterlist *sgl, unsigned int i)
{
	return page_address(sg_page(&sgl[i]));
}

/* The page of entry `i`, for the bio_vec case (c_api_cases.rs). */
struct page *tilde_conformance_page(struct scatterlist *sgl, unsigned int i)
{
	return sg_page(&sgl[i]);
}
