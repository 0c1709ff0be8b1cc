// SPDX-License-Identifier: GPL-2.0
/*
 * tilde_loopback.ko's C side (the device is loopback.rs, this file's Rust binding
 * netdev.rs): what the kernels tilde targets agree on in C but not in Rust (module
 * parameters and author), and the network device the RoCE port takes its GIDs from,
 * followed through its notifier.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/netdevice.h>
#include <linux/rtnetlink.h>
#include <linux/slab.h>
#include <rdma/ib_verbs.h>

#include "../../rdma-core-rs/src/sys/tilde_rdma.h"

MODULE_AUTHOR("tilde");

static char *netdev = "";
module_param(netdev, charp, 0444);
MODULE_PARM_DESC(netdev, "network device whose addresses become the port's GIDs");

struct tilde_lo_glue {
	struct notifier_block notifier;
	/* Under RTNL: the device the port is bound to, and the IB device. */
	struct net_device *ndev;
	struct ib_device *ibdev;
	bool watching;
	/* The port state last reported, where the driver reports it (helpers.c). */
	enum ib_port_state reported;
};

struct tilde_lo_glue *tilde_lo_glue_new(void);
void tilde_lo_glue_free(struct tilde_lo_glue *glue);
void tilde_lo_detach(struct tilde_lo_glue *glue);
int tilde_lo_attach(struct tilde_lo_glue *glue, struct ib_device *ibdev, u8 *mac);
bool tilde_lo_port_up(struct ib_device *ibdev);

/*
 * A NETDEV_UNREGISTER of the bound device unbinds the port (what ib_device_set_netdev()
 * asks of its callers): its GIDs go, and the port reports DOWN until the module is
 * reloaded on another device.
 */
static int tilde_lo_netdev_event(struct notifier_block *notifier, unsigned long event,
				 void *ptr)
{
	struct tilde_lo_glue *glue = container_of(notifier, struct tilde_lo_glue, notifier);
	struct net_device *ndev = netdev_notifier_info_to_dev(ptr);

	if (ndev != glue->ndev || !ndev)
		return NOTIFY_DONE;
	/*
	 * The port's state follows the netdev's: reported by the IB core itself where it
	 * does that, else by the binding layer for us (helpers.c).
	 */
	if (event == NETDEV_UP || event == NETDEV_DOWN || event == NETDEV_CHANGE) {
		tilde_rdma_netdev_port_event(glue->ibdev, 1, ndev, &glue->reported);
		return NOTIFY_OK;
	}
	if (event != NETDEV_UNREGISTER)
		return NOTIFY_DONE;
	pr_info("tilde_loopback: %s: %s is going away: port 1 unbound\n",
		dev_name(&glue->ibdev->dev), ndev->name);
	ib_device_set_netdev(glue->ibdev, NULL, 1);
	glue->ndev = NULL;
	return NOTIFY_OK;
}

struct tilde_lo_glue *tilde_lo_glue_new(void)
{
	struct tilde_lo_glue *glue = kzalloc(sizeof(*glue), GFP_KERNEL);

	if (!glue)
		return NULL;
	glue->notifier.notifier_call = tilde_lo_netdev_event;
	return glue;
}

/*
 * Stops following the netdev, before the IB device is unregistered: the notifier must
 * never see the device freed (unregistering a notifier replays NETDEV_UNREGISTER for
 * every netdev). The IB core's own hold on the netdev ends with the unregistration.
 */
void tilde_lo_detach(struct tilde_lo_glue *glue)
{
	if (!glue->watching)
		return;
	/* The replayed events then match nothing. */
	rtnl_lock();
	glue->ndev = NULL;
	glue->ibdev = NULL;
	rtnl_unlock();
	unregister_netdevice_notifier(&glue->notifier);
	glue->watching = false;
}

void tilde_lo_glue_free(struct tilde_lo_glue *glue)
{
	tilde_lo_detach(glue);
	kfree(glue);
}

/*
 * Binds port 1 of `ibdev` (allocated, not yet registered) to the network device the
 * `netdev` parameter names and copies its MAC to `mac`: -ENODEV if there is none. The
 * notifier is registered first, and the binding made under RTNL, so an unregistration
 * cannot slip between the lookup and the watch.
 */
int tilde_lo_attach(struct tilde_lo_glue *glue, struct ib_device *ibdev, u8 *mac)
{
	struct net_device *ndev;
	int ret;

	ret = register_netdevice_notifier(&glue->notifier);
	if (ret)
		return ret;
	glue->watching = true;
	rtnl_lock();
	ndev = __dev_get_by_name(&init_net, netdev);
	if (!ndev || ndev->addr_len != ETH_ALEN) {
		rtnl_unlock();
		pr_err("tilde_loopback: no Ethernet device named '%s' (parameter netdev)\n",
		       netdev);
		return -ENODEV;
	}
	ret = ib_device_set_netdev(ibdev, ndev, 1);
	if (!ret) {
		glue->ndev = ndev;
		glue->ibdev = ibdev;
		glue->reported = netif_running(ndev) && netif_carrier_ok(ndev) ?
					 IB_PORT_ACTIVE : IB_PORT_DOWN;
		memcpy(mac, ndev->dev_addr, ETH_ALEN);
	}
	rtnl_unlock();
	return ret;
}

/* Whether port 1 has a network device that is up with carrier. */
bool tilde_lo_port_up(struct ib_device *ibdev)
{
	struct net_device *ndev = ib_device_get_netdev(ibdev, 1);
	bool up;

	if (!ndev)
		return false;
	up = netif_running(ndev) && netif_carrier_ok(ndev);
	dev_put(ndev);
	return up;
}
