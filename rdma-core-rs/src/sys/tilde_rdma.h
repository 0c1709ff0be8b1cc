/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The target kernel's RDMA API as tilde sees it: bindgen reads this header with the
 * kernel's own flags (see `cargo xtask kmod`), so the bindings always match the headers of
 * the kernel the module is built for.
 *
 * The kernel's static inline functions have no symbol a Rust module can call; each one
 * tilde needs gets a `tilde_`-prefixed wrapper here, defined in helpers.c and linked into
 * the module (the same scheme as the kernel's own rust/helpers).
 */
#ifndef TILDE_RDMA_H
#define TILDE_RDMA_H

#include <rdma/ib_verbs.h>
#include <rdma/ib_cache.h>
#include <rdma/rdma_cm.h>
#include <rdma/ib_cm.h>
#include <linux/llist.h>
#include <linux/bvec.h>

bool tilde_rdma_device_try_get(struct ib_device *device);
void tilde_rdma_device_get(struct ib_device *device);
bool tilde_rdma_may_sleep(void);
void tilde_rdma_fsleep(unsigned long usecs);
u64 tilde_rdma_ktime_ns(void);
void tilde_rdma_dma_wmb(void);
void tilde_rdma_dma_rmb(void);
void tilde_rdma_wmb(void);
const void *tilde_rdma_current(void);
struct net *tilde_rdma_init_net(void);
void tilde_rdma_fill_sockaddr_in(void *storage, __be32 addr, __be16 port);

void *tilde_rdma_mutex_new(struct lock_class_key *key, const char *name);
void tilde_rdma_mutex_free(void *lock);
void tilde_rdma_mutex_lock(void *lock);
void tilde_rdma_mutex_unlock(void *lock);
struct tilde_rdma_delayed_work;
struct tilde_rdma_delayed_work *tilde_rdma_delayed_work_new(u64 (*run)(void *data), void *data);
void tilde_rdma_delayed_work_schedule(struct tilde_rdma_delayed_work *work, u64 delay_ms);
void tilde_rdma_delayed_work_kick(struct tilde_rdma_delayed_work *work);
void tilde_rdma_delayed_work_free(struct tilde_rdma_delayed_work *work);

struct lock_class_key;
void *tilde_rdma_irq_lock_new(struct lock_class_key *key, const char *name);
void tilde_rdma_irq_lock_free(void *lock);
unsigned long tilde_rdma_irq_lock(void *lock);
void tilde_rdma_irq_unlock(void *lock, unsigned long flags);

bool tilde_rdma_llist_add(struct llist_node *node, struct llist_head *head);
struct llist_node *tilde_rdma_llist_del_all(struct llist_head *head);

struct ib_device *tilde_rdma_device_get_by_name(const char *name);

u32 tilde_rdma_start_port(const struct ib_device *device);
bool tilde_rdma_cap_ib_cm(const struct ib_device *device, u32 port);
void tilde_rdma_netdev_port_event(struct ib_device *device, u32 port, struct net_device *ndev,
				  enum ib_port_state *reported);
u32 tilde_rdma_end_port(const struct ib_device *device);

int tilde_rdma_post_send(struct ib_qp *qp, const struct ib_send_wr *wr,
			 const struct ib_send_wr **bad_wr);
int tilde_rdma_post_recv(struct ib_qp *qp, const struct ib_recv_wr *wr,
			 const struct ib_recv_wr **bad_wr);

u64 tilde_rdma_dma_map(struct ib_device *device, void *cpu_addr, size_t size);
int tilde_rdma_dma_mapping_error(struct ib_device *device, u64 dma_addr);
void tilde_rdma_dma_unmap(struct ib_device *device, u64 dma_addr, size_t size);
void tilde_rdma_dma_sync_for_cpu(struct ib_device *device, u64 dma_addr, size_t size);
void tilde_rdma_dma_sync_for_device(struct ib_device *device, u64 dma_addr, size_t size);

int tilde_rdma_map_mr(struct ib_mr *mr, u64 dma_addr, u32 len);
int tilde_rdma_map_mr_sg(struct ib_mr *mr, struct scatterlist *sgl, int nents);
int tilde_rdma_dma_map_sg(struct ib_device *device, struct scatterlist *sgl, int nents,
			  enum dma_data_direction direction);
void tilde_rdma_dma_unmap_sg(struct ib_device *device, struct scatterlist *sgl, int nents,
			     enum dma_data_direction direction);
void tilde_rdma_bump_mr_key(struct ib_mr *mr);
u64 tilde_rdma_dma_map_bvec(struct ib_device *device, const struct bio_vec *bvec,
			    enum dma_data_direction direction);
void tilde_rdma_dma_unmap_bvec(struct ib_device *device, u64 dma_addr, u32 len,
			       enum dma_data_direction direction);

/*
 * The kernel's iSCSI initiator (libiscsi, scsi_transport_iscsi) and the SCSI midlayer, for
 * tilde's iSER transport. Its wrappers of static inline functions are defined in the
 * module that calls them (ulp-iser/kmod/transport.c), so that tilde_core.ko itself never
 * depends on the SCSI modules.
 */
#include <scsi/iscsi_proto.h>
#include <scsi/libiscsi.h>
#include <scsi/scsi_cmnd.h>
#include <scsi/scsi_host.h>
#include <scsi/scsi_transport_iscsi.h>

struct Scsi_Host *tilde_iscsi_session_to_shost(struct iscsi_cls_session *cls_session);
bool tilde_iscsi_task_has_unsol_data(struct iscsi_task *task);
struct scatterlist *tilde_scsi_sglist(struct scsi_cmnd *sc);
unsigned int tilde_scsi_sg_count(struct scsi_cmnd *sc);
unsigned int tilde_scsi_bufflen(struct scsi_cmnd *sc);
void tilde_iser_unbind(struct iscsi_conn *conn, void *endpoint);
bool tilde_iser_module_get(void);
void tilde_iser_module_put(void);
void tilde_iser_bh_disable(void);
void tilde_iser_bh_enable(void);

/* The iSER transport's own tables (transport.c). */
struct Scsi_Host *tilde_iser_host_alloc(void);
struct iscsi_cls_session *tilde_iser_session_setup(struct Scsi_Host *shost, u16 cmds_max,
						   int dd_size, u32 initial_cmdsn);
int tilde_iser_register(void);
void tilde_iser_unregister(void);

/*
 * PCI drivers (rdma_core::pci): the driver structure with its callbacks, and the
 * accessors the kernel keeps inline. The rest of the PCI and DMA API is exported and
 * bound directly.
 */
#include <linux/pci.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>

struct pci_driver *tilde_pci_driver_new(const char *name, const struct pci_device_id *ids,
					int (*probe)(struct pci_dev *pdev,
						     const struct pci_device_id *id),
					void (*remove)(struct pci_dev *pdev));
int tilde_pci_driver_register(struct pci_driver *driver, struct module *owner,
			      const char *mod_name);
void tilde_pci_driver_unregister(struct pci_driver *driver);
void tilde_pci_set_drvdata(struct pci_dev *pdev, void *data);
void *tilde_pci_get_drvdata(struct pci_dev *pdev);
const char *tilde_pci_name(const struct pci_dev *pdev);
struct device *tilde_pci_dma_device(struct pci_dev *pdev);
void tilde_ib_set_parent(struct ib_device *ibdev, struct device *parent);
void tilde_ib_dispatch_port_event(struct ib_device *ibdev, u32 port, u32 event);
u16 tilde_pci_vendor(const struct pci_dev *pdev);
u16 tilde_pci_device(const struct pci_dev *pdev);
u64 tilde_pci_resource_len(const struct pci_dev *pdev, int bar);
bool tilde_pci_resource_is_mem(const struct pci_dev *pdev, int bar);
int tilde_pci_set_dma_mask(struct pci_dev *pdev, unsigned int bits);
void *tilde_pci_alloc_coherent(struct pci_dev *pdev, size_t size, u64 *bus);
void tilde_pci_free_coherent(struct pci_dev *pdev, size_t size, void *cpu, u64 bus);
int tilde_pci_alloc_msix(struct pci_dev *pdev, unsigned int min, unsigned int max);
struct tilde_irq;
int tilde_pci_request_irq(struct pci_dev *pdev, unsigned int vector, bool (*handler)(void *data),
			  void *data, const char *name, struct tilde_irq **out);
void tilde_pci_free_irq(struct tilde_irq *action);
u32 tilde_ioread32be(const void __iomem *addr);
void tilde_iowrite32be(u32 value, void __iomem *addr);
void tilde_rdma_cond_resched(void);

/*
 * InfiniBand network interfaces (rdma_core::netdev, netdev.c): the net_device_ops,
 * header_ops and ethtool_ops tables are C (they hold the kernel's own functions and
 * differ in fields between kernels); each callback reaches the Rust owner through the
 * ops and data stored in the netdev's private area. The 20-byte hardware address goes
 * from the hard header to start_xmit in a pseudo header in front of the 4-byte
 * encapsulation header, as the kernel's ib_ipoib does (skb->cb does not survive qdiscs).
 */
struct tilde_rdma_netdev_ops {
	int (*open)(struct net_device *dev, void *data);
	void (*stop)(struct net_device *dev, void *data);
	/* Owns `skb` (data at the encapsulation header); `daddr` is 20 bytes. */
	void (*xmit)(struct net_device *dev, void *data, struct sk_buff *skb, const u8 *daddr,
		     u16 ethertype);
	/* A negative errno, or the MTU the interface takes. */
	int (*change_mtu)(struct net_device *dev, void *data, int mtu);
	void (*rx_mode)(struct net_device *dev, void *data);
	/* IPoIB's `mode` attribute: 1 connected, 0 datagram, or a negative errno. */
	int (*get_mode)(struct net_device *dev, void *data);
	/* Called with RTNL: a negative errno, or the MTU the new mode gives. */
	int (*set_mode)(struct net_device *dev, void *data, bool connected);
};
struct net_device *tilde_rdma_netdev_alloc(const char *name_format,
					   const struct tilde_rdma_netdev_ops *ops, void *data,
					   const char *driver, struct ib_device *parent,
					   const u8 *addr, const u8 *broadcast, unsigned int mtu,
					   unsigned int max_mtu, unsigned int tx_queue_len);
int tilde_rdma_netdev_register(struct net_device *dev);
void tilde_rdma_netdev_unregister(struct net_device *dev);
void tilde_rdma_netdev_free(struct net_device *dev);
void tilde_rdma_netdev_name(const struct net_device *dev, u8 *out);
void tilde_rdma_netdev_carrier(struct net_device *dev, bool on);
void tilde_rdma_netdev_set_mtu(struct net_device *dev, unsigned int mtu);
void tilde_rdma_netdev_set_addr(struct net_device *dev, const u8 *addr);
void tilde_rdma_netdev_queue(struct net_device *dev, bool run);
int tilde_rdma_netdev_rx(struct net_device *dev, const u8 *payload, u32 len, u16 ethertype,
			 u8 pkt_type);
void tilde_rdma_netdev_count(struct net_device *dev, u32 what, u32 bytes);
u32 tilde_rdma_netdev_mc_list(struct net_device *dev, u8 (*gids)[16], u32 max);
void tilde_rdma_netdev_hold(struct net_device *dev);
void tilde_rdma_netdev_put(struct net_device *dev);
u32 tilde_rdma_skb_len(const struct sk_buff *skb);
int tilde_rdma_skb_copy(const struct sk_buff *skb, u8 *out, u32 len);
void tilde_rdma_skb_free(struct sk_buff *skb, bool sent);

/* Subnet administration (rdma_core::sa): joins and path queries with flat records. */
struct ib_sa_client;
struct ib_sa_client *tilde_rdma_sa_client_new(void);
void tilde_rdma_sa_client_free(struct ib_sa_client *client);
struct tilde_rdma_mcmember {
	u8 mgid[16];
	u16 mlid;
	u32 qkey;
	u8 mtu;
	u8 sl;
	u8 rate;
	u8 traffic_class;
	u32 flow_label;
	u8 hop_limit;
};
struct tilde_rdma_path {
	u16 dlid;
	u8 sl;
	u8 rate;
	u8 mtu;
	u8 packet_life_time;
	u8 hop_limit;
	u8 traffic_class;
	u32 flow_label;
};
struct tilde_rdma_join;
struct tilde_rdma_join *tilde_rdma_sa_join(struct ib_sa_client *client, struct ib_device *device,
					   u32 port, const u8 *mgid, const u8 *port_gid, u16 pkey,
					   bool send_only,
					   const struct tilde_rdma_mcmember *broadcast,
					   void (*done)(void *context, u64 id, int status,
							const struct tilde_rdma_mcmember *rec),
					   void *context, u64 id);
void tilde_rdma_sa_leave(struct tilde_rdma_join *join);
int tilde_rdma_sa_path_query(struct ib_sa_client *client, struct ib_device *device, u32 port,
			     const u8 *sgid, const u8 *dgid, u16 pkey, u32 timeout_ms,
			     void (*done)(void *context, u64 id, int status,
					  const struct tilde_rdma_path *path),
			     void *context, u64 id);

/*
 * The InfiniBand CM (rdma_core::ib_cm, ib_cm.c): events and path records flat, the
 * QP attributes the CM derives applied in C.
 */
struct tilde_ib_cm_event {
	u32 event;
	/* REJ: the reason; *_ERROR: the MAD's send status. */
	int status;
	u32 remote_qpn;
	u32 starting_psn;
	u8 rnr_retry_count;
	u8 port;
	bool has_private_data;
	u8 private_data[64];
};
/* A path the SA answered, and its two ends. */
struct tilde_ib_cm_path {
	u8 sgid[16];
	u8 dgid[16];
	u16 slid;
	u16 pkey;
	struct tilde_rdma_path path;
};
void tilde_ib_cm_flatten(const struct ib_cm_event *event, struct tilde_ib_cm_event *out);
int tilde_ib_cm_send_req(struct ib_cm_id *id, const struct tilde_ib_cm_path *path,
			 u64 service_id, u32 qp_num, u32 starting_psn, const void *private_data,
			 u8 private_data_len, u8 retry_count, u8 rnr_retry_count);
int tilde_ib_cm_send_rep(struct ib_cm_id *id, u32 qp_num, u32 starting_psn, u8 rnr_retry_count,
			 const void *private_data, u8 private_data_len);
int tilde_ib_cm_modify_qp(struct ib_cm_id *id, struct ib_qp *qp, enum ib_qp_state state);
int tilde_ib_cm_listen(struct ib_cm_id *id, u64 service_id);
void *tilde_ib_cm_current(void);

#endif
