// SPDX-License-Identifier: GPL-2.0
/*
 * tilde_iser's tables for the kernel's iSCSI initiator: the SCSI host template and the
 * iSCSI transport `iser`, as static C data (they hold THIS_MODULE, bit fields and
 * libiscsi's own functions, whose signatures drift between kernels while the tables'
 * field names do not). Every transport-specific callback is Rust (the trampolines of the
 * binding iscsi.rs, over the datamover iser.rs); the generic ones are libiscsi's, exactly
 * as in the kernel's ib_iser. Also the callable forms of the static inline SCSI and iSCSI
 * helpers the Rust side uses (declared in tilde_rdma.h, or in iscsi.rs for the ones only
 * the binding uses).
 */
#include <linux/bottom_half.h>
#include <linux/module.h>
#include <linux/rcupdate.h>
#include <scsi/libiscsi.h>
#include <scsi/scsi_cmnd.h>
#include <scsi/scsi_host.h>
#include <scsi/scsi_transport_iscsi.h>

#include "../../rdma-core-rs/src/sys/tilde_rdma.h"

MODULE_AUTHOR("tilde developers");

/* The transport-specific callbacks: the trampolines of iscsi.rs (`iscsi_transport!`). */
struct iscsi_cls_session *tilde_iser_session_create(struct iscsi_endpoint *ep, u16 cmds_max,
						    u16 qdepth, u32 initial_cmdsn);
void tilde_iser_session_destroy(struct iscsi_cls_session *cls_session);
struct iscsi_cls_conn *tilde_iser_conn_create(struct iscsi_cls_session *cls_session,
					      u32 conn_idx);
int tilde_iser_conn_bind(struct iscsi_cls_session *cls_session,
			 struct iscsi_cls_conn *cls_conn, u64 transport_eph, int is_leading);
int tilde_iser_conn_start(struct iscsi_cls_conn *cls_conn);
void tilde_iser_conn_stop(struct iscsi_cls_conn *cls_conn, int flag);
int tilde_iser_set_param(struct iscsi_cls_conn *cls_conn, enum iscsi_param param, char *buf,
			 int buflen);
int tilde_iser_get_ep_param(struct iscsi_endpoint *ep, enum iscsi_param param, char *buf);
struct iscsi_endpoint *tilde_iser_ep_connect(struct Scsi_Host *shost,
					     struct sockaddr *dst_addr, int non_blocking);
int tilde_iser_ep_poll(struct iscsi_endpoint *ep, int timeout_ms);
void tilde_iser_ep_disconnect(struct iscsi_endpoint *ep);
int tilde_iser_task_init(struct iscsi_task *task);
int tilde_iser_task_xmit(struct iscsi_task *task);
void tilde_iser_task_cleanup(struct iscsi_task *task);
int tilde_iser_pdu_alloc(struct iscsi_task *task, u8 opcode);

/* The helpers only iscsi.rs uses, which declares them itself (below). */
void tilde_iser_back_lock(struct iscsi_conn *conn);
void tilde_iser_back_unlock(struct iscsi_conn *conn);
int tilde_iser_complete_pdu_locked(struct iscsi_conn *conn, struct iscsi_hdr *hdr, char *data,
				   int datalen);
void tilde_iser_rcu_read_lock(void);
void tilde_iser_rcu_read_unlock(void);
void tilde_iser_synchronize_rcu(void);

/* What iscsid may read in sysfs: the same attributes as ib_iser's. */
static umode_t tilde_iser_attr_is_visible(int param_type, int param)
{
	switch (param_type) {
	case ISCSI_HOST_PARAM:
		switch (param) {
		case ISCSI_HOST_PARAM_NETDEV_NAME:
		case ISCSI_HOST_PARAM_HWADDRESS:
		case ISCSI_HOST_PARAM_INITIATOR_NAME:
			return 0444;
		default:
			return 0;
		}
	case ISCSI_PARAM:
		switch (param) {
		case ISCSI_PARAM_MAX_RECV_DLENGTH:
		case ISCSI_PARAM_MAX_XMIT_DLENGTH:
		case ISCSI_PARAM_HDRDGST_EN:
		case ISCSI_PARAM_DATADGST_EN:
		case ISCSI_PARAM_CONN_ADDRESS:
		case ISCSI_PARAM_CONN_PORT:
		case ISCSI_PARAM_EXP_STATSN:
		case ISCSI_PARAM_PERSISTENT_ADDRESS:
		case ISCSI_PARAM_PERSISTENT_PORT:
		case ISCSI_PARAM_PING_TMO:
		case ISCSI_PARAM_RECV_TMO:
		case ISCSI_PARAM_INITIAL_R2T_EN:
		case ISCSI_PARAM_MAX_R2T:
		case ISCSI_PARAM_IMM_DATA_EN:
		case ISCSI_PARAM_FIRST_BURST:
		case ISCSI_PARAM_MAX_BURST:
		case ISCSI_PARAM_PDU_INORDER_EN:
		case ISCSI_PARAM_DATASEQ_INORDER_EN:
		case ISCSI_PARAM_TARGET_NAME:
		case ISCSI_PARAM_TPGT:
		case ISCSI_PARAM_USERNAME:
		case ISCSI_PARAM_PASSWORD:
		case ISCSI_PARAM_USERNAME_IN:
		case ISCSI_PARAM_PASSWORD_IN:
		case ISCSI_PARAM_FAST_ABORT:
		case ISCSI_PARAM_ABORT_TMO:
		case ISCSI_PARAM_LU_RESET_TMO:
		case ISCSI_PARAM_TGT_RESET_TMO:
		case ISCSI_PARAM_IFACE_NAME:
		case ISCSI_PARAM_INITIATOR_NAME:
		case ISCSI_PARAM_DISCOVERY_SESS:
			return 0444;
		default:
			return 0;
		}
	}
	return 0;
}

static void tilde_iser_get_stats(struct iscsi_cls_conn *cls_conn, struct iscsi_stats *stats)
{
	struct iscsi_conn *conn = cls_conn->dd_data;

	stats->txdata_octets = conn->txdata_octets;
	stats->rxdata_octets = conn->rxdata_octets;
	stats->scsicmd_pdus = conn->scsicmd_pdus_cnt;
	stats->dataout_pdus = conn->dataout_pdus_cnt;
	stats->scsirsp_pdus = conn->scsirsp_pdus_cnt;
	stats->datain_pdus = conn->datain_pdus_cnt;
	stats->r2t_pdus = conn->r2t_pdus_cnt;
	stats->tmfcmd_pdus = conn->tmfcmd_pdus_cnt;
	stats->tmfrsp_pdus = conn->tmfrsp_pdus_cnt;
	stats->custom_length = 0;
}

/*
 * One region per command: 128 entries of 4 KiB (SCSI pages never straddle 4 KiB
 * boundaries: virt_boundary_mask below), 512 KiB per command.
 */
#define TILDE_ISER_SG_TABLESIZE 128
#define TILDE_ISER_MAX_SECTORS 1024

static const struct scsi_host_template tilde_iser_sht = {
	.module = THIS_MODULE,
	.name = "iSCSI Initiator over iSER (tilde)",
	.queuecommand = iscsi_queuecommand,
	.change_queue_depth = scsi_change_queue_depth,
	.sg_tablesize = TILDE_ISER_SG_TABLESIZE,
	.max_sectors = TILDE_ISER_MAX_SECTORS,
	.cmd_per_lun = 128,
	.eh_timed_out = iscsi_eh_cmd_timed_out,
	.eh_abort_handler = iscsi_eh_abort,
	.eh_device_reset_handler = iscsi_eh_device_reset,
	.eh_target_reset_handler = iscsi_eh_recover_target,
	.target_alloc = iscsi_target_alloc,
	.proc_name = "iscsi_iser",
	.this_id = -1,
	.track_queue_depth = 1,
	.cmd_size = sizeof(struct iscsi_cmd),
};

static struct iscsi_transport tilde_iser_transport = {
	.owner = THIS_MODULE,
	.name = "iser",
	.caps = CAP_RECOVERY_L0 | CAP_MULTI_R2T | CAP_TEXT_NEGO,
	.create_session = tilde_iser_session_create,
	.destroy_session = tilde_iser_session_destroy,
	.create_conn = tilde_iser_conn_create,
	.bind_conn = tilde_iser_conn_bind,
	.unbind_conn = iscsi_conn_unbind,
	.destroy_conn = iscsi_conn_teardown,
	.attr_is_visible = tilde_iser_attr_is_visible,
	.set_param = tilde_iser_set_param,
	.get_conn_param = iscsi_conn_get_param,
	.get_ep_param = tilde_iser_get_ep_param,
	.get_session_param = iscsi_session_get_param,
	.start_conn = tilde_iser_conn_start,
	.stop_conn = tilde_iser_conn_stop,
	.get_host_param = iscsi_host_get_param,
	.set_host_param = iscsi_host_set_param,
	.send_pdu = iscsi_conn_send_pdu,
	.get_stats = tilde_iser_get_stats,
	.init_task = tilde_iser_task_init,
	.xmit_task = tilde_iser_task_xmit,
	.cleanup_task = tilde_iser_task_cleanup,
	.alloc_pdu = tilde_iser_pdu_alloc,
	.session_recovery_timedout = iscsi_session_recovery_timedout,
	.ep_connect = tilde_iser_ep_connect,
	.ep_poll = tilde_iser_ep_poll,
	.ep_disconnect = tilde_iser_ep_disconnect,
};

static struct scsi_transport_template *tilde_iser_scsi_transport;

int tilde_iser_register(void)
{
	tilde_iser_scsi_transport = iscsi_register_transport(&tilde_iser_transport);
	return tilde_iser_scsi_transport ? 0 : -EEXIST;
}

void tilde_iser_unregister(void)
{
	iscsi_unregister_transport(&tilde_iser_transport);
}

/* A SCSI host of this transport, its limits set as ib_iser sets them. */
struct Scsi_Host *tilde_iser_host_alloc(void)
{
	struct Scsi_Host *shost = iscsi_host_alloc(&tilde_iser_sht, 0, 0);

	if (!shost)
		return NULL;
	shost->transportt = tilde_iser_scsi_transport;
	shost->max_lun = 512;
	shost->max_id = 0;
	shost->max_channel = 0;
	shost->max_cmd_len = 16;
	shost->virt_boundary_mask = SZ_4K - 1;
	return shost;
}

struct iscsi_cls_session *tilde_iser_session_setup(struct Scsi_Host *shost, u16 cmds_max,
						   int dd_size, u32 initial_cmdsn)
{
	return iscsi_session_setup(&tilde_iser_transport, shost, cmds_max, 0, dd_size,
				   initial_cmdsn, 0);
}

struct Scsi_Host *tilde_iscsi_session_to_shost(struct iscsi_cls_session *cls_session)
{
	return iscsi_session_to_shost(cls_session);
}

bool tilde_iscsi_task_has_unsol_data(struct iscsi_task *task)
{
	return iscsi_task_has_unsol_data(task);
}

struct scatterlist *tilde_scsi_sglist(struct scsi_cmnd *sc)
{
	return scsi_sglist(sc);
}

unsigned int tilde_scsi_sg_count(struct scsi_cmnd *sc)
{
	return scsi_sg_count(sc);
}

unsigned int tilde_scsi_bufflen(struct scsi_cmnd *sc)
{
	return scsi_bufflen(sc);
}

/*
 * Unbinds a connection from `endpoint` under the session's locks, so that no xmit
 * (frwd_lock) or task cleanup (back_lock) sees a half-gone endpoint.
 */
void tilde_iser_unbind(struct iscsi_conn *conn, void *endpoint)
{
	struct iscsi_session *session = conn->session;

	spin_lock_bh(&session->frwd_lock);
	spin_lock_bh(&session->back_lock);
	/* Only our own binding: iscsid may have bound the connection anew since. */
	if (conn->dd_data == endpoint)
		conn->dd_data = NULL;
	spin_unlock_bh(&session->back_lock);
	spin_unlock_bh(&session->frwd_lock);
}

/*
 * Each endpoint pins the module: its CQ and CM callbacks are this module's code, and an
 * endpoint iscsid never disconnects would otherwise outlive `rmmod`. Dropped as the
 * endpoint's last act, inside a callback during which the iSCSI class holds the module.
 */
bool tilde_iser_module_get(void)
{
	return try_module_get(THIS_MODULE);
}

void tilde_iser_module_put(void)
{
	module_put(THIS_MODULE);
}

void tilde_iser_bh_disable(void)
{
	local_bh_disable();
}

void tilde_iser_bh_enable(void)
{
	local_bh_enable();
}

/*
 * For the Rust binding of libiscsi (iscsi.rs): the session's back_lock, taken on the
 * completion path to look a command up by its tag and complete its PDU under one hold,
 * and libiscsi's PDU completion for a caller that holds it.
 */
void tilde_iser_back_lock(struct iscsi_conn *conn)
{
	spin_lock_bh(&conn->session->back_lock);
}

void tilde_iser_back_unlock(struct iscsi_conn *conn)
{
	spin_unlock_bh(&conn->session->back_lock);
}

int tilde_iser_complete_pdu_locked(struct iscsi_conn *conn, struct iscsi_hdr *hdr, char *data,
				   int datalen)
{
	lockdep_assert_held(&conn->session->back_lock);
	return __iscsi_complete_pdu(conn, hdr, data, datalen);
}

/*
 * The bound connection on the completion path is read under RCU; unbinding waits for
 * those readers before the iSCSI class may free the connection.
 */
void tilde_iser_rcu_read_lock(void)
{
	rcu_read_lock();
}

void tilde_iser_rcu_read_unlock(void)
{
	rcu_read_unlock();
}

void tilde_iser_synchronize_rcu(void)
{
	synchronize_rcu();
}
