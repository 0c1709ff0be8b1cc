// SPDX-License-Identifier: GPL-2.0
/*
 * Callable forms of the kernel's static inline RDMA functions; see tilde_rdma.h.
 */
#include "tilde_rdma.h"
#include <linux/delay.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/string.h>
#include <linux/timekeeping.h>
#include <linux/workqueue.h>

u32 tilde_rdma_start_port(const struct ib_device *device)
{
	return rdma_start_port(device);
}

u32 tilde_rdma_end_port(const struct ib_device *device)
{
	return rdma_end_port(device);
}

bool tilde_rdma_cap_ib_cm(const struct ib_device *device, u32 port)
{
	return rdma_cap_ib_cm(device, port);
}

/*
 * The posting verbs are static inline in ib_verbs.h (a call through the device's ops);
 * bindgen cannot see them, so they are wrapped here. Same for the ib_dma_* mapping
 * helpers, which pick virtual addresses for software devices (rxe) and the DMA API for
 * hardware. tilde maps its buffers bidirectionally: one buffer may be sent from and
 * received into.
 */
int tilde_rdma_post_send(struct ib_qp *qp, const struct ib_send_wr *wr,
			 const struct ib_send_wr **bad_wr)
{
	return ib_post_send(qp, wr, bad_wr);
}

int tilde_rdma_post_recv(struct ib_qp *qp, const struct ib_recv_wr *wr,
			 const struct ib_recv_wr **bad_wr)
{
	return ib_post_recv(qp, wr, bad_wr);
}

u64 tilde_rdma_dma_map(struct ib_device *device, void *cpu_addr, size_t size)
{
	return ib_dma_map_single(device, cpu_addr, size, DMA_BIDIRECTIONAL);
}

int tilde_rdma_dma_mapping_error(struct ib_device *device, u64 dma_addr)
{
	return ib_dma_mapping_error(device, dma_addr);
}

void tilde_rdma_dma_unmap(struct ib_device *device, u64 dma_addr, size_t size)
{
	ib_dma_unmap_single(device, dma_addr, size, DMA_BIDIRECTIONAL);
}

void tilde_rdma_dma_sync_for_cpu(struct ib_device *device, u64 dma_addr, size_t size)
{
	ib_dma_sync_single_for_cpu(device, dma_addr, size, DMA_BIDIRECTIONAL);
}

void tilde_rdma_dma_sync_for_device(struct ib_device *device, u64 dma_addr, size_t size)
{
	ib_dma_sync_single_for_device(device, dma_addr, size, DMA_BIDIRECTIONAL);
}

/*
 * Maps `len` bytes at DMA address `dma_addr` (already mapped for the MR's device) into a
 * fast-registration MR: a one-entry scatterlist that carries only its DMA side, which is
 * all ib_map_mr_sg reads. Returns the entries mapped (1) or a negative errno.
 */
int tilde_rdma_map_mr(struct ib_mr *mr, u64 dma_addr, u32 len)
{
	struct scatterlist sg;

	sg_init_table(&sg, 1);
	sg_dma_address(&sg) = dma_addr;
	sg_dma_len(&sg) = len;
	return ib_map_mr_sg(mr, &sg, 1, NULL, PAGE_SIZE);
}

/*
 * Maps a caller's scatterlist (`nents` entries, already mapped for the MR's device) into a
 * fast-registration MR as one region starting at the first entry's offset. Returns the
 * entries mapped (all of them on success) or a negative errno.
 */
int tilde_rdma_map_mr_sg(struct ib_mr *mr, struct scatterlist *sgl, int nents)
{
	return ib_map_mr_sg(mr, sgl, nents, NULL, PAGE_SIZE);
}

/* ib_dma_map_sg: the DMA side of a caller's scatterlist, for one device. */
int tilde_rdma_dma_map_sg(struct ib_device *device, struct scatterlist *sgl, int nents,
			  enum dma_data_direction direction)
{
	return ib_dma_map_sg(device, sgl, nents, direction);
}

void tilde_rdma_dma_unmap_sg(struct ib_device *device, struct scatterlist *sgl, int nents,
			     enum dma_data_direction direction)
{
	ib_dma_unmap_sg(device, sgl, nents, direction);
}

/*
 * Gives a fast-registration MR a new key (the low byte of lkey and rkey) before it is
 * registered again, so keys handed out for an earlier registration stop working.
 */
void tilde_rdma_bump_mr_key(struct ib_mr *mr)
{
	ib_update_fast_reg_key(mr, ib_inc_rkey(mr->rkey));
}

/* A registration reference: the device cannot finish unregistering while one is held. */
bool tilde_rdma_device_try_get(struct ib_device *device)
{
	return ib_device_try_get(device);
}

/* Another reference, for a caller that holds one already. */
void tilde_rdma_device_get(struct ib_device *device)
{
	refcount_inc(&device->refcount);
}

/*
 * Whether the caller may sleep: verbs teardown (dereg MR, destroy QP/CQ, dealloc PD)
 * waits for the driver, so it must not run from a softirq completion handler.
 */
bool tilde_rdma_may_sleep(void)
{
	return !in_atomic() && !irqs_disabled();
}

/*
 * A spinlock taken with interrupts off, for `sync::IrqSpinLock`: a driver's state is
 * reached from process context, softirq (CQ polling) and hard interrupts alike. It lives
 * in its own allocation, so the Rust value that owns it may move. Its lockdep class is
 * `key`, a static of the place in the source that makes it (`irq_spin_lock!`), as
 * `spin_lock_init` gives each of its callers one: with one class for all, an EQ handler
 * that takes a CQ's lock inside its own was reported as recursive locking.
 */
void *tilde_rdma_irq_lock_new(struct lock_class_key *key, const char *name)
{
	spinlock_t *lock = kmalloc(sizeof(*lock), GFP_KERNEL);

	if (lock) {
		spin_lock_init(lock);
		lockdep_set_class_and_name(lock, key, name);
	}
	return lock;
}

void tilde_rdma_irq_lock_free(void *lock)
{
	kfree(lock);
}

unsigned long tilde_rdma_irq_lock(void *lock)
{
	unsigned long flags;

	spin_lock_irqsave((spinlock_t *)lock, flags);
	return flags;
}

void tilde_rdma_irq_unlock(void *lock, unsigned long flags)
{
	spin_unlock_irqrestore((spinlock_t *)lock, flags);
}

/*
 * A sleeping lock for `sync::Mutex`, in its own allocation like the spinlock above, and
 * like it in lockdep class `key` of its place in the source (`mutex!`).
 */
void *tilde_rdma_mutex_new(struct lock_class_key *key, const char *name)
{
	struct mutex *lock = kmalloc(sizeof(*lock), GFP_KERNEL);

	if (lock) {
		mutex_init(lock);
		lockdep_set_class_and_name(lock, key, name);
	}
	return lock;
}

void tilde_rdma_mutex_free(void *lock)
{
	mutex_destroy((struct mutex *)lock);
	kfree(lock);
}

void tilde_rdma_mutex_lock(void *lock)
{
	mutex_lock((struct mutex *)lock);
}

void tilde_rdma_mutex_unlock(void *lock)
{
	mutex_unlock((struct mutex *)lock);
}

/*
 * Delayed work for `work::DelayedWork`: `run(data)` on the system workqueue, again after
 * the delay it returns in milliseconds (0: not again). Freeing cancels it and waits for a
 * run under way (cancel_delayed_work_sync() copes with work that requeues itself).
 */
struct tilde_rdma_delayed_work {
	struct delayed_work work;
	u64 (*run)(void *data);
	void *data;
};

static void tilde_rdma_delayed_work_fn(struct work_struct *work)
{
	struct tilde_rdma_delayed_work *w =
		container_of(to_delayed_work(work), struct tilde_rdma_delayed_work, work);
	u64 again = w->run(w->data);

	if (again)
		schedule_delayed_work(&w->work, msecs_to_jiffies(again));
}

struct tilde_rdma_delayed_work *tilde_rdma_delayed_work_new(u64 (*run)(void *data), void *data)
{
	struct tilde_rdma_delayed_work *w = kzalloc(sizeof(*w), GFP_KERNEL);

	if (!w)
		return NULL;
	INIT_DELAYED_WORK(&w->work, tilde_rdma_delayed_work_fn);
	w->run = run;
	w->data = data;
	return w;
}

void tilde_rdma_delayed_work_schedule(struct tilde_rdma_delayed_work *work, u64 delay_ms)
{
	schedule_delayed_work(&work->work, msecs_to_jiffies(delay_ms));
}

/*
 * Runs it as soon as it can, pending or not (callable in any context), on the workqueue
 * schedule_delayed_work uses: 7.x renamed it, and warns about the old name.
 */
void tilde_rdma_delayed_work_kick(struct tilde_rdma_delayed_work *work)
{
#ifdef TILDE_SYSTEM_PERCPU_WQ
	mod_delayed_work(system_percpu_wq, &work->work, 0);
#else
	mod_delayed_work(system_wq, &work->work, 0);
#endif
}

void tilde_rdma_delayed_work_free(struct tilde_rdma_delayed_work *work)
{
	cancel_delayed_work_sync(&work->work);
	kfree(work);
}

/* Lock-free hand-off of completed work requests from any context (llist.h). */
bool tilde_rdma_llist_add(struct llist_node *node, struct llist_head *head)
{
	return llist_add(node, head);
}

struct llist_node *tilde_rdma_llist_del_all(struct llist_head *head)
{
	return llist_del_all(head);
}

/* The running task, as an identity only (never dereferenced by the caller). */
const void *tilde_rdma_current(void)
{
	return current;
}

/* The initial network namespace, where kernel RDMA CM ids live. */
struct net *tilde_rdma_init_net(void)
{
	return &init_net;
}

/* A `struct sockaddr_in` for `addr:port` (both big-endian) in `storage`. */
void tilde_rdma_fill_sockaddr_in(void *storage, __be32 addr, __be16 port)
{
	struct sockaddr_in *sin = storage;

	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = addr;
	sin->sin_port = port;
}

/* Sleeps `usecs` microseconds the way the kernel prefers for that length. */
void tilde_rdma_fsleep(unsigned long usecs)
{
	fsleep(usecs);
}

/* The monotonic clock in nanoseconds. */
u64 tilde_rdma_ktime_ns(void)
{
	return ktime_get_ns();
}

/* The barriers, for architectures where `kernel_api::barrier` does not inline them. */
void tilde_rdma_dma_wmb(void)
{
	dma_wmb();
}

void tilde_rdma_dma_rmb(void)
{
	dma_rmb();
}

void tilde_rdma_wmb(void)
{
	wmb();
}

/*
 * A device by name, with a registration reference, for kernels whose IB core keeps
 * ib_device_get_by_name() to itself (sys/c_api.rs decides). Registering a client is the
 * IB core's one exported way to see every registered device: its add callback runs for
 * each one, under the core's device lock, so a device found there is registered and its
 * reference can be taken. The callback declines every device, so the client keeps no
 * state and unregistering it calls nothing. Lookups are serialised by one mutex. May
 * sleep; never from an IB client callback, which holds the client lock registration needs.
 */
static DEFINE_MUTEX(tilde_rdma_lookup_lock);
static const char *tilde_rdma_lookup_name;
static struct ib_device *tilde_rdma_lookup_found;

static int tilde_rdma_lookup_add(struct ib_device *device)
{
	if (!tilde_rdma_lookup_found &&
	    !strncmp(device->name, tilde_rdma_lookup_name, IB_DEVICE_NAME_MAX) &&
	    ib_device_try_get(device))
		tilde_rdma_lookup_found = device;
	return -EOPNOTSUPP;
}

static struct ib_client tilde_rdma_lookup_client = {
	.name = "tilde_lookup",
	.add = tilde_rdma_lookup_add,
};

struct ib_device *tilde_rdma_device_get_by_name(const char *name)
{
	struct ib_device *found;

	mutex_lock(&tilde_rdma_lookup_lock);
	tilde_rdma_lookup_name = name;
	tilde_rdma_lookup_found = NULL;
	if (!ib_register_client(&tilde_rdma_lookup_client))
		ib_unregister_client(&tilde_rdma_lookup_client);
	found = tilde_rdma_lookup_found;
	tilde_rdma_lookup_name = NULL;
	mutex_unlock(&tilde_rdma_lookup_lock);
	return found;
}

/*
 * One bio_vec mapped for a device. Kernels with ib_dma_map_bvec() (cargo xtask kmod's
 * probe defines TILDE_IB_DMA_MAP_BVEC) map its physical range with it; older ones map
 * the same page, offset and length with ib_dma_map_page(), which is what the newer
 * helper does for pages the kernel maps. Both use the virtual address for software
 * devices.
 */
u64 tilde_rdma_dma_map_bvec(struct ib_device *device, const struct bio_vec *bvec,
			    enum dma_data_direction direction)
{
#ifdef TILDE_IB_DMA_MAP_BVEC
	struct bio_vec segment = *bvec;

	return ib_dma_map_bvec(device, &segment, direction);
#else
	return ib_dma_map_page(device, bvec->bv_page, bvec->bv_offset, bvec->bv_len,
			       direction);
#endif
}

void tilde_rdma_dma_unmap_bvec(struct ib_device *device, u64 dma_addr, u32 len,
			       enum dma_data_direction direction)
{
#ifdef TILDE_IB_DMA_MAP_BVEC
	ib_dma_unmap_bvec(device, dma_addr, len, direction);
#else
	ib_dma_unmap_page(device, dma_addr, len, direction);
#endif
}

/*
 * A netdev bound to `port` of `device` went up, down or changed (a driver's NETDEV_UP,
 * NETDEV_DOWN, NETDEV_CHANGE). Kernels with ib_dispatch_port_state_event() (cargo xtask
 * kmod's probe defines TILDE_IB_DISPATCH_PORT_STATE_EVENT) report the port's new state
 * from the IB core's own notifier; older ones leave it to the driver, as rxe does, and
 * this reports it: PORT_ACTIVE or PORT_ERR, once per change of `*reported` (the driver's
 * record of the last state reported, under RTNL as netdev notifiers run).
 */
void tilde_rdma_netdev_port_event(struct ib_device *device, u32 port, struct net_device *ndev,
				  enum ib_port_state *reported)
{
#ifndef TILDE_IB_DISPATCH_PORT_STATE_EVENT
	enum ib_port_state state = netif_running(ndev) && netif_carrier_ok(ndev) ?
					   IB_PORT_ACTIVE : IB_PORT_DOWN;
	struct ib_event event = {
		.device = device,
		.element.port_num = port,
		.event = state == IB_PORT_ACTIVE ? IB_EVENT_PORT_ACTIVE : IB_EVENT_PORT_ERR,
	};

	if (state == *reported)
		return;
	*reported = state;
	ib_dispatch_event(&event);
#endif
}

/*
 * A PCI driver whose probe and remove are rdma_core::pci's trampolines for one Rust
 * driver. Allocated here because `struct pci_driver` embeds the driver core's
 * `struct device_driver`, which must not move once registered; freed by
 * tilde_pci_driver_unregister() after the driver core let go of it.
 */
struct pci_driver *tilde_pci_driver_new(const char *name, const struct pci_device_id *ids,
					int (*probe)(struct pci_dev *pdev,
						     const struct pci_device_id *id),
					void (*remove)(struct pci_dev *pdev))
{
	struct pci_driver *driver = kzalloc(sizeof(*driver), GFP_KERNEL);

	if (!driver)
		return NULL;
	driver->name = name;
	driver->id_table = ids;
	driver->probe = probe;
	driver->remove = remove;
	return driver;
}

int tilde_pci_driver_register(struct pci_driver *driver, struct module *owner,
			      const char *mod_name)
{
	int err = __pci_register_driver(driver, owner, mod_name);

	if (err)
		kfree(driver);
	return err;
}

void tilde_pci_driver_unregister(struct pci_driver *driver)
{
	pci_unregister_driver(driver);
	kfree(driver);
}

void tilde_pci_set_drvdata(struct pci_dev *pdev, void *data)
{
	pci_set_drvdata(pdev, data);
}

void *tilde_pci_get_drvdata(struct pci_dev *pdev)
{
	return pci_get_drvdata(pdev);
}

const char *tilde_pci_name(const struct pci_dev *pdev)
{
	return pci_name(pdev);
}

void tilde_ib_dispatch_port_event(struct ib_device *ibdev, u32 port, u32 event)
{
	struct ib_event ev = {
		.device = ibdev,
		.element.port_num = port,
		.event = event,
	};

	ib_dispatch_event(&ev);
}

void tilde_ib_set_parent(struct ib_device *ibdev, struct device *parent)
{
	ibdev->dev.parent = parent;
}

struct device *tilde_pci_dma_device(struct pci_dev *pdev)
{
	return &pdev->dev;
}

u16 tilde_pci_vendor(const struct pci_dev *pdev)
{
	return pdev->vendor;
}

u16 tilde_pci_device(const struct pci_dev *pdev)
{
	return pdev->device;
}

u64 tilde_pci_resource_len(const struct pci_dev *pdev, int bar)
{
	return pci_resource_len(pdev, bar);
}

bool tilde_pci_resource_is_mem(const struct pci_dev *pdev, int bar)
{
	return pci_resource_flags(pdev, bar) & IORESOURCE_MEM;
}

int tilde_pci_set_dma_mask(struct pci_dev *pdev, unsigned int bits)
{
	return dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(bits));
}

void *tilde_pci_alloc_coherent(struct pci_dev *pdev, size_t size, u64 *bus)
{
	dma_addr_t handle;
	void *cpu = dma_alloc_coherent(&pdev->dev, size, &handle, GFP_KERNEL);

	*bus = handle;
	return cpu;
}

void tilde_pci_free_coherent(struct pci_dev *pdev, size_t size, void *cpu, u64 bus)
{
	dma_free_coherent(&pdev->dev, size, cpu, bus);
}

/* Device registers kept big-endian (the ConnectX HCR, doorbells). */
u32 tilde_ioread32be(const void __iomem *addr)
{
	return ioread32be(addr);
}

void tilde_iowrite32be(u32 value, void __iomem *addr)
{
	iowrite32be(value, addr);
}

void tilde_rdma_cond_resched(void)
{
	cond_resched();
}

int tilde_pci_alloc_msix(struct pci_dev *pdev, unsigned int min, unsigned int max)
{
	return pci_alloc_irq_vectors(pdev, min, max, PCI_IRQ_MSIX);
}

/*
 * An interrupt handler that is a Rust callback: `handler(data)` says whether the
 * interrupt was the device's. The action remembers its IRQ number for free_irq().
 */
struct tilde_irq {
	bool (*handler)(void *data);
	void *data;
	unsigned int irq;
};

static irqreturn_t tilde_pci_irq(int irq, void *cookie)
{
	struct tilde_irq *action = cookie;

	return action->handler(action->data) ? IRQ_HANDLED : IRQ_NONE;
}

int tilde_pci_request_irq(struct pci_dev *pdev, unsigned int vector, bool (*handler)(void *data),
			  void *data, const char *name, struct tilde_irq **out)
{
	struct tilde_irq *action;
	int irq = pci_irq_vector(pdev, vector);
	int err;

	if (irq < 0)
		return irq;
	action = kzalloc(sizeof(*action), GFP_KERNEL);
	if (!action)
		return -ENOMEM;
	action->handler = handler;
	action->data = data;
	action->irq = irq;
	err = request_irq(irq, tilde_pci_irq, 0, name, action);
	if (err) {
		kfree(action);
		return err;
	}
	*out = action;
	return 0;
}

/* Frees the IRQ (waiting for a running handler to return), then the action. */
void tilde_pci_free_irq(struct tilde_irq *action)
{
	free_irq(action->irq, action);
	kfree(action);
}
