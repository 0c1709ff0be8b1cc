// SPDX-License-Identifier: GPL-2.0
/*
 * InfiniBand network interfaces and subnet administration for rdma_core::netdev and
 * rdma_core::sa; see tilde_rdma.h. Only C can hold the kernel's ops tables (their fields
 * and the functions they name move between kernels); every callback goes straight to
 * the Rust owner. The SA records are flattened here, so the Rust side never sees the
 * unions of `struct sa_path_rec`.
 */
#include "tilde_rdma.h"
#include <linux/ethtool.h>
#include <linux/if_arp.h>
#include <linux/if_infiniband.h>
#include <linux/netdevice.h>
#include <linux/rtnetlink.h>
#include <linux/sched/signal.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <rdma/ib_sa.h>

/* The encapsulation header (EtherType, reserved) and the pseudo header before it. */
#define TILDE_ENCAP_LEN 4
#define TILDE_PSEUDO_LEN INFINIBAND_ALEN
#define TILDE_HARD_LEN (TILDE_ENCAP_LEN + TILDE_PSEUDO_LEN)

struct tilde_rdma_netdev_priv {
	const struct tilde_rdma_netdev_ops *ops;
	void *data;
	const char *driver;
};

static struct tilde_rdma_netdev_priv *tilde_priv(struct net_device *dev)
{
	return netdev_priv(dev);
}

static int tilde_ndo_open(struct net_device *dev)
{
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);
	int ret = priv->ops->open(dev, priv->data);

	if (!ret)
		netif_start_queue(dev);
	return ret;
}

static int tilde_ndo_stop(struct net_device *dev)
{
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);

	netif_stop_queue(dev);
	priv->ops->stop(dev, priv->data);
	return 0;
}

static netdev_tx_t tilde_ndo_start_xmit(struct sk_buff *skb, struct net_device *dev)
{
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);
	u8 daddr[INFINIBAND_ALEN];
	__be16 ethertype;

	/* A frame without our hard header (a raw packet socket) has no destination. */
	if (skb->len < TILDE_HARD_LEN || skb_headlen(skb) < TILDE_HARD_LEN) {
		DEV_STATS_INC(dev, tx_dropped);
		dev_kfree_skb_any(skb);
		return NETDEV_TX_OK;
	}
	memcpy(daddr, skb->data, INFINIBAND_ALEN);
	skb_pull(skb, TILDE_PSEUDO_LEN);
	memcpy(&ethertype, skb->data, sizeof(ethertype));
	priv->ops->xmit(dev, priv->data, skb, daddr, ntohs(ethertype));
	return NETDEV_TX_OK;
}

/* The driver answers with the MTU the interface takes (the link may allow less). */
static int tilde_ndo_change_mtu(struct net_device *dev, int mtu)
{
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);
	int ret = priv->ops->change_mtu(dev, priv->data, mtu);

	if (ret < 0)
		return ret;
	WRITE_ONCE(dev->mtu, ret);
	return 0;
}

static void tilde_ndo_set_rx_mode(struct net_device *dev)
{
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);

	priv->ops->rx_mode(dev, priv->data);
}

static const struct net_device_ops tilde_netdev_ops = {
	.ndo_open = tilde_ndo_open,
	.ndo_stop = tilde_ndo_stop,
	.ndo_start_xmit = tilde_ndo_start_xmit,
	.ndo_change_mtu = tilde_ndo_change_mtu,
	.ndo_set_rx_mode = tilde_ndo_set_rx_mode,
};

/* ib_ipoib's hard header: the encapsulation header, and the destination in front. */
static int tilde_hard_header(struct sk_buff *skb, struct net_device *dev, unsigned short type,
			     const void *daddr, const void *saddr, unsigned int len)
{
	__be16 *header = skb_push(skb, TILDE_ENCAP_LEN);
	u8 *pseudo;

	header[0] = htons(type);
	header[1] = 0;
	pseudo = skb_push(skb, TILDE_PSEUDO_LEN);
	if (daddr)
		memcpy(pseudo, daddr, INFINIBAND_ALEN);
	else
		memset(pseudo, 0, INFINIBAND_ALEN);
	return TILDE_HARD_LEN;
}

static const struct header_ops tilde_header_ops = {
	.create = tilde_hard_header,
};

static void tilde_get_drvinfo(struct net_device *dev, struct ethtool_drvinfo *info)
{
	strscpy(info->driver, tilde_priv(dev)->driver, sizeof(info->driver));
}

static const struct ethtool_ops tilde_ethtool_ops = {
	.get_drvinfo = tilde_get_drvinfo,
	.get_link = ethtool_op_get_link,
};

/*
 * /sys/class/net/<if>/mode, as ib_ipoib's: "datagram" or "connected". Switching takes
 * RTNL (tried, as ib_ipoib does, so a writer racing an unregister restarts instead of
 * deadlocking), then the interface takes the new mode's MTU through dev_set_mtu, so the
 * stack hears of it.
 */
static ssize_t mode_show(struct device *d, struct device_attribute *attr, char *buf)
{
	struct net_device *dev = to_net_dev(d);
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);
	int mode = priv->ops->get_mode(dev, priv->data);

	if (mode < 0)
		return mode;
	return sysfs_emit(buf, mode ? "connected\n" : "datagram\n");
}

static ssize_t mode_store(struct device *d, struct device_attribute *attr, const char *buf,
			  size_t count)
{
	struct net_device *dev = to_net_dev(d);
	struct tilde_rdma_netdev_priv *priv = tilde_priv(dev);
	bool connected;
	int mtu;

	if (sysfs_streq(buf, "connected"))
		connected = true;
	else if (sysfs_streq(buf, "datagram"))
		connected = false;
	else
		return -EINVAL;
	if (!rtnl_trylock())
		return restart_syscall();
	if (dev->reg_state != NETREG_REGISTERED) {
		rtnl_unlock();
		return -EPERM;
	}
	mtu = priv->ops->set_mode(dev, priv->data, connected);
	if (mtu > 0 && mtu != dev->mtu)
		mtu = dev_set_mtu(dev, mtu);
	rtnl_unlock();
	return mtu < 0 ? mtu : count;
}

static DEVICE_ATTR_RW(mode);

static struct attribute *tilde_netdev_attrs[] = {
	&dev_attr_mode.attr,
	NULL,
};

static const struct attribute_group tilde_netdev_group = {
	.attrs = tilde_netdev_attrs,
};

static void tilde_netdev_setup(struct net_device *dev)
{
	/* The device's own group: created and removed with the netdev's sysfs. */
	dev->sysfs_groups[0] = &tilde_netdev_group;
	dev->netdev_ops = &tilde_netdev_ops;
	dev->header_ops = &tilde_header_ops;
	dev->ethtool_ops = &tilde_ethtool_ops;
	dev->type = ARPHRD_INFINIBAND;
	dev->hard_header_len = TILDE_HARD_LEN;
	dev->addr_len = INFINIBAND_ALEN;
	dev->flags = IFF_BROADCAST | IFF_MULTICAST;
	dev->min_mtu = 68;
	netif_keep_dst(dev);
	netif_carrier_off(dev);
}

struct net_device *tilde_rdma_netdev_alloc(const char *name_format,
					   const struct tilde_rdma_netdev_ops *ops, void *data,
					   const char *driver, struct ib_device *parent,
					   const u8 *addr, const u8 *broadcast, unsigned int mtu,
					   unsigned int max_mtu, unsigned int tx_queue_len)
{
	struct tilde_rdma_netdev_priv *priv;
	struct net_device *dev;

	dev = alloc_netdev(sizeof(*priv), name_format, NET_NAME_ENUM, tilde_netdev_setup);
	if (!dev)
		return NULL;
	priv = tilde_priv(dev);
	priv->ops = ops;
	priv->data = data;
	priv->driver = driver;
	if (parent && parent->dev.parent)
		SET_NETDEV_DEV(dev, parent->dev.parent);
	dev_addr_set(dev, addr);
	memcpy(dev->broadcast, broadcast, INFINIBAND_ALEN);
	dev->mtu = mtu;
	dev->max_mtu = max_mtu;
	/*
	 * alloc_netdev marks a device that set no queue length in its setup as queueless;
	 * this one has a queue (the transmit path stops it while the send ring is full).
	 */
	dev->tx_queue_len = tx_queue_len;
	dev->priv_flags &= ~IFF_NO_QUEUE;
	return dev;
}

int tilde_rdma_netdev_register(struct net_device *dev)
{
	return register_netdev(dev);
}

void tilde_rdma_netdev_unregister(struct net_device *dev)
{
	unregister_netdev(dev);
}

void tilde_rdma_netdev_free(struct net_device *dev)
{
	free_netdev(dev);
}

/* The name into `out` (IFNAMSIZ bytes), NUL-padded. */
void tilde_rdma_netdev_name(const struct net_device *dev, u8 *out)
{
	strscpy_pad((char *)out, dev->name, IFNAMSIZ);
}

void tilde_rdma_netdev_carrier(struct net_device *dev, bool on)
{
	if (on)
		netif_carrier_on(dev);
	else
		netif_carrier_off(dev);
}

/*
 * The link's MTU as the fabric gives it. Not dev_set_mtu: that takes RTNL, which the
 * callers (SA completions, the transmit path) cannot wait for.
 */
void tilde_rdma_netdev_set_mtu(struct net_device *dev, unsigned int mtu)
{
	WRITE_ONCE(dev->mtu, min(mtu, dev->max_mtu));
}

void tilde_rdma_netdev_set_addr(struct net_device *dev, const u8 *addr)
{
	netif_addr_lock_bh(dev);
	dev_addr_mod(dev, 0, addr, INFINIBAND_ALEN);
	netif_addr_unlock_bh(dev);
}

/* Stops the transmit queue while the send ring is full, restarts it when it is not. */
void tilde_rdma_netdev_queue(struct net_device *dev, bool run)
{
	if (run)
		netif_wake_queue(dev);
	else
		netif_stop_queue(dev);
}

/*
 * Hands a received IP or ARP packet to the stack: copied into a new skb with the
 * encapsulation header behind a zeroed pseudo header as its MAC header, as ib_ipoib
 * lays it out. Called with interrupts on (netif_rx enables bottom halves).
 */
int tilde_rdma_netdev_rx(struct net_device *dev, const u8 *payload, u32 len, u16 ethertype,
			 u8 pkt_type)
{
	struct sk_buff *skb = netdev_alloc_skb(dev, TILDE_HARD_LEN + len + NET_IP_ALIGN);
	__be16 *header;

	if (!skb) {
		DEV_STATS_INC(dev, rx_dropped);
		return -ENOMEM;
	}
	skb_reserve(skb, NET_IP_ALIGN);
	memset(skb_put(skb, TILDE_PSEUDO_LEN), 0, TILDE_PSEUDO_LEN);
	header = skb_put(skb, TILDE_ENCAP_LEN);
	header[0] = htons(ethertype);
	header[1] = 0;
	skb_put_data(skb, payload, len);
	skb_reset_mac_header(skb);
	skb_pull(skb, TILDE_HARD_LEN);
	skb->protocol = htons(ethertype);
	skb->pkt_type = pkt_type;
	DEV_STATS_INC(dev, rx_packets);
	DEV_STATS_ADD(dev, rx_bytes, len);
	netif_rx(skb);
	return 0;
}

/* 0: a packet sent, 1: dropped on transmit, 2: errors on transmit, 3: dropped on receive. */
void tilde_rdma_netdev_count(struct net_device *dev, u32 what, u32 bytes)
{
	switch (what) {
	case 0:
		DEV_STATS_INC(dev, tx_packets);
		DEV_STATS_ADD(dev, tx_bytes, bytes);
		break;
	case 1:
		DEV_STATS_INC(dev, tx_dropped);
		break;
	case 2:
		DEV_STATS_INC(dev, tx_errors);
		break;
	default:
		DEV_STATS_INC(dev, rx_dropped);
		break;
	}
}

/* The interface's multicast list, as GIDs (the 16 bytes after flags and QPN), up to max. */
u32 tilde_rdma_netdev_mc_list(struct net_device *dev, u8 (*gids)[16], u32 max)
{
	struct netdev_hw_addr *ha;
	u32 n = 0;

	netdev_for_each_mc_addr(ha, dev) {
		if (n == max)
			break;
		memcpy(gids[n++], ha->addr + 4, 16);
	}
	return n;
}

u32 tilde_rdma_skb_len(const struct sk_buff *skb)
{
	return skb->len;
}

int tilde_rdma_skb_copy(const struct sk_buff *skb, u8 *out, u32 len)
{
	return skb_copy_bits(skb, 0, out, len);
}

void tilde_rdma_skb_free(struct sk_buff *skb, bool sent)
{
	if (sent)
		dev_consume_skb_any(skb);
	else
		dev_kfree_skb_any(skb);
}

struct ib_sa_client *tilde_rdma_sa_client_new(void)
{
	struct ib_sa_client *client = kzalloc(sizeof(*client), GFP_KERNEL);

	if (client)
		ib_sa_register_client(client);
	return client;
}

void tilde_rdma_sa_client_free(struct ib_sa_client *client)
{
	ib_sa_unregister_client(client);
	kfree(client);
}

struct tilde_rdma_join {
	struct ib_sa_multicast *multicast;
	void (*done)(void *context, u64 id, int status, const struct tilde_rdma_mcmember *rec);
	void *context;
	u64 id;
};

static int tilde_join_done(int status, struct ib_sa_multicast *multicast)
{
	struct tilde_rdma_join *join = multicast->context;
	struct tilde_rdma_mcmember rec = {};

	if (!status) {
		memcpy(rec.mgid, multicast->rec.mgid.raw, 16);
		rec.mlid = be16_to_cpu(multicast->rec.mlid);
		rec.qkey = be32_to_cpu(multicast->rec.qkey);
		rec.mtu = multicast->rec.mtu;
		rec.sl = multicast->rec.sl;
		rec.rate = multicast->rec.rate;
		rec.traffic_class = multicast->rec.traffic_class;
		rec.flow_label = be32_to_cpu(multicast->rec.flow_label);
		rec.hop_limit = multicast->rec.hop_limit;
	}
	join->done(join->context, join->id, status, &rec);
	/* Never 0 → freed by the SA: the owner leaves with tilde_rdma_sa_leave. */
	return 0;
}

/*
 * Joins a group as ib_ipoib's ipoib_mcast_join does: the broadcast group with the port's
 * GID and P_Key only; the others with the broadcast group's parameters (RFC 4391 §4.1).
 * Atomic-safe (GFP_ATOMIC): the answer comes later, from the SA's workqueue.
 */
struct tilde_rdma_join *tilde_rdma_sa_join(struct ib_sa_client *client, struct ib_device *device,
					   u32 port, const u8 *mgid, const u8 *port_gid, u16 pkey,
					   bool send_only,
					   const struct tilde_rdma_mcmember *broadcast,
					   void (*done)(void *context, u64 id, int status,
							const struct tilde_rdma_mcmember *rec),
					   void *context, u64 id)
{
	struct ib_sa_mcmember_rec rec = { .join_state = 1 };
	struct tilde_rdma_join *join;
	struct ib_sa_multicast *multicast;
	ib_sa_comp_mask comp_mask;

	join = kzalloc(sizeof(*join), GFP_ATOMIC);
	if (!join)
		return NULL;
	join->done = done;
	join->context = context;
	join->id = id;
	memcpy(rec.mgid.raw, mgid, 16);
	memcpy(rec.port_gid.raw, port_gid, 16);
	rec.pkey = cpu_to_be16(pkey);
	comp_mask = IB_SA_MCMEMBER_REC_MGID | IB_SA_MCMEMBER_REC_PORT_GID |
		    IB_SA_MCMEMBER_REC_PKEY | IB_SA_MCMEMBER_REC_JOIN_STATE;
	if (broadcast) {
		comp_mask |= IB_SA_MCMEMBER_REC_QKEY | IB_SA_MCMEMBER_REC_MTU_SELECTOR |
			     IB_SA_MCMEMBER_REC_MTU | IB_SA_MCMEMBER_REC_TRAFFIC_CLASS |
			     IB_SA_MCMEMBER_REC_RATE_SELECTOR | IB_SA_MCMEMBER_REC_RATE |
			     IB_SA_MCMEMBER_REC_SL | IB_SA_MCMEMBER_REC_FLOW_LABEL |
			     IB_SA_MCMEMBER_REC_HOP_LIMIT;
		rec.qkey = cpu_to_be32(broadcast->qkey);
		rec.mtu_selector = IB_SA_EQ;
		rec.mtu = broadcast->mtu;
		rec.traffic_class = broadcast->traffic_class;
		rec.rate_selector = IB_SA_EQ;
		rec.rate = broadcast->rate;
		rec.sl = broadcast->sl;
		rec.flow_label = cpu_to_be32(broadcast->flow_label);
		rec.hop_limit = broadcast->hop_limit;
		if (send_only)
			rec.join_state = SENDONLY_FULLMEMBER_JOIN;
	}
	multicast = ib_sa_join_multicast(client, device, port, &rec, comp_mask, GFP_ATOMIC,
					 tilde_join_done, join);
	if (IS_ERR(multicast)) {
		kfree(join);
		return NULL;
	}
	join->multicast = multicast;
	return join;
}

/* Leaves the group (or cancels the join); no callback runs after it. Sleeps. */
void tilde_rdma_sa_leave(struct tilde_rdma_join *join)
{
	ib_sa_free_multicast(join->multicast);
	kfree(join);
}

struct tilde_rdma_path_query {
	void (*done)(void *context, u64 id, int status, const struct tilde_rdma_path *path);
	void *context;
	u64 id;
};

static void tilde_path_done(int status, struct sa_path_rec *resp, unsigned int num_prs,
			    void *context)
{
	struct tilde_rdma_path_query *query = context;
	struct tilde_rdma_path path = {};

	if (!status && resp && num_prs) {
		path.dlid = (u16)be32_to_cpu(sa_path_get_dlid(resp));
		path.sl = resp->sl;
		path.rate = resp->rate;
		path.mtu = resp->mtu;
		path.packet_life_time = resp->packet_life_time;
		path.hop_limit = resp->hop_limit;
		path.traffic_class = resp->traffic_class;
		path.flow_label = be32_to_cpu(resp->flow_label);
	} else if (!status) {
		status = -ENODATA;
	}
	query->done(query->context, query->id, status, &path);
	kfree(query);
}

/*
 * Asks the SA for a path, as ib_ipoib's path_rec_start does. Atomic-safe; the answer (or
 * the timeout) comes once, later, unless this returns an error.
 */
int tilde_rdma_sa_path_query(struct ib_sa_client *client, struct ib_device *device, u32 port,
			     const u8 *sgid, const u8 *dgid, u16 pkey, u32 timeout_ms,
			     void (*done)(void *context, u64 id, int status,
					  const struct tilde_rdma_path *path),
			     void *context, u64 id)
{
	struct tilde_rdma_path_query *query = kzalloc(sizeof(*query), GFP_ATOMIC);
	struct sa_path_rec rec = {};
	struct ib_sa_query *sa_query;
	int ret;

	if (!query)
		return -ENOMEM;
	query->done = done;
	query->context = context;
	query->id = id;
	rec.rec_type = SA_PATH_REC_TYPE_IB;
	memcpy(rec.dgid.raw, dgid, 16);
	memcpy(rec.sgid.raw, sgid, 16);
	rec.pkey = cpu_to_be16(pkey);
	rec.numb_path = 1;
	ret = ib_sa_path_rec_get(client, device, port, &rec,
				 IB_SA_PATH_REC_DGID | IB_SA_PATH_REC_SGID |
				 IB_SA_PATH_REC_NUMB_PATH | IB_SA_PATH_REC_TRAFFIC_CLASS |
				 IB_SA_PATH_REC_PKEY,
				 timeout_ms, GFP_ATOMIC, tilde_path_done, query, &sa_query);
	if (ret < 0) {
		kfree(query);
		return ret;
	}
	return 0;
}

void tilde_rdma_netdev_hold(struct net_device *dev)
{
	dev_hold(dev);
}

void tilde_rdma_netdev_put(struct net_device *dev)
{
	dev_put(dev);
}
