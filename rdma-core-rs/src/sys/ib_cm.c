// SPDX-License-Identifier: GPL-2.0
/*
 * The InfiniBand CM (ib_cm.h) for rdma_core::ib_cm; see tilde_rdma.h. The Rust side
 * owns each ib_cm_id and is its handler; what is C here is what the Rust side should
 * not see: the unions of `struct ib_cm_event` and of `struct sa_path_rec`, and the
 * attribute block ib_cm_init_qp_attr fills.
 */
#include "tilde_rdma.h"
#include <rdma/ib_cm.h>
#include <linux/sched.h>
#include <rdma/ib_sa.h>

/* An event's fields, flattened; the private data's first bytes copied. */
void tilde_ib_cm_flatten(const struct ib_cm_event *event, struct tilde_ib_cm_event *out)
{
	memset(out, 0, sizeof(*out));
	out->event = event->event;
	switch (event->event) {
	case IB_CM_REQ_RECEIVED:
		out->remote_qpn = event->param.req_rcvd.remote_qpn;
		out->starting_psn = event->param.req_rcvd.starting_psn;
		out->rnr_retry_count = event->param.req_rcvd.rnr_retry_count;
		out->port = event->param.req_rcvd.port;
		break;
	case IB_CM_REP_RECEIVED:
		out->remote_qpn = event->param.rep_rcvd.remote_qpn;
		out->starting_psn = event->param.rep_rcvd.starting_psn;
		break;
	case IB_CM_REJ_RECEIVED:
		out->status = event->param.rej_rcvd.reason;
		break;
	case IB_CM_REQ_ERROR:
	case IB_CM_REP_ERROR:
	case IB_CM_DREQ_ERROR:
		out->status = event->param.send_status;
		break;
	default:
		break;
	}
	/* Every event that carries private data carries more than this. */
	if (event->private_data) {
		memcpy(out->private_data, event->private_data, sizeof(out->private_data));
		out->has_private_data = true;
	}
}

/* A REQ for an RC connection over one path, as ib_ipoib's ipoib_cm_send_req sends it. */
int tilde_ib_cm_send_req(struct ib_cm_id *id, const struct tilde_ib_cm_path *path,
			 u64 service_id, u32 qp_num, u32 starting_psn, const void *private_data,
			 u8 private_data_len, u8 retry_count, u8 rnr_retry_count)
{
	struct sa_path_rec rec = {};
	struct ib_cm_req_param req = {};

	rec.rec_type = SA_PATH_REC_TYPE_IB;
	memcpy(rec.sgid.raw, path->sgid, 16);
	memcpy(rec.dgid.raw, path->dgid, 16);
	sa_path_set_slid(&rec, path->slid);
	sa_path_set_dlid(&rec, path->path.dlid);
	rec.pkey = cpu_to_be16(path->pkey);
	rec.sl = path->path.sl;
	rec.mtu_selector = IB_SA_EQ;
	rec.mtu = path->path.mtu;
	rec.rate_selector = IB_SA_EQ;
	rec.rate = path->path.rate;
	rec.packet_life_time_selector = IB_SA_EQ;
	rec.packet_life_time = path->path.packet_life_time;
	rec.hop_limit = path->path.hop_limit;
	rec.traffic_class = path->path.traffic_class;
	rec.flow_label = cpu_to_be32(path->path.flow_label);
	rec.reversible = 1;
	rec.numb_path = 1;

	req.primary_path = &rec;
	req.service_id = cpu_to_be64(service_id);
	req.qp_num = qp_num;
	req.qp_type = IB_QPT_RC;
	req.starting_psn = starting_psn;
	req.private_data = private_data;
	req.private_data_len = private_data_len;
	req.responder_resources = 4;
	req.remote_cm_response_timeout = 20;
	req.local_cm_response_timeout = 20;
	req.retry_count = retry_count;
	req.rnr_retry_count = rnr_retry_count;
	req.max_cm_retries = 15;
	return ib_send_cm_req(id, &req);
}

int tilde_ib_cm_send_rep(struct ib_cm_id *id, u32 qp_num, u32 starting_psn, u8 rnr_retry_count,
			 const void *private_data, u8 private_data_len)
{
	struct ib_cm_rep_param rep = {};

	rep.qp_num = qp_num;
	rep.starting_psn = starting_psn;
	rep.private_data = private_data;
	rep.private_data_len = private_data_len;
	rep.rnr_retry_count = rnr_retry_count;
	return ib_send_cm_rep(id, &rep);
}

/* Moves `qp` to `state` with the attributes the CM derives from the connection. */
int tilde_ib_cm_modify_qp(struct ib_cm_id *id, struct ib_qp *qp, enum ib_qp_state state)
{
	struct ib_qp_attr attr = { .qp_state = state };
	int mask = 0;
	int ret = ib_cm_init_qp_attr(id, &attr, &mask);

	if (ret)
		return ret;
	return ib_modify_qp(qp, &attr, mask);
}

int tilde_ib_cm_listen(struct ib_cm_id *id, u64 service_id)
{
	return ib_cm_listen(id, cpu_to_be64(service_id));
}

/* The task running: an id's callback notes it, so a drop inside it can tell. */
void *tilde_ib_cm_current(void)
{
	return current;
}
