// SPDX-License-Identifier: GPL-2.0
/*
 * The C fast path tilde's is measured against: rdma-core's mlx4 provider
 * (providers/mlx4: mlx4_post_send, mlx4_poll_cq), unmodified, linked from the static
 * library of an rdma-core build (see benches/build.rs and `cargo xtask rdma-core`).
 *
 * This file is tilde's harness, not rdma-core code: it sets up one RC QP and its CQ the
 * way the provider's own create paths leave them (mlx4_create_qp, mlx4_create_cq), over
 * plain memory, with a page standing in for the UAR and another for the BlueFlame
 * register. BlueFlame is off (bf_buf_size 0: every post rings the 32-bit send doorbell)
 * unless the job asks for it, as tilde's side does. The QP is RC or UD. The device's part
 * (writing a CQE per signaled send WQE and per posted receive) is played here, untimed,
 * as the Rust side plays it for tilde's fast path.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mlx4.h"

enum {
	RIG_QPN = 0x48,
	RIG_CQN = 0x81,
	RIG_PAGE = 4096,
};

struct tilde_c_rig {
	struct mlx4_context ctx;
	struct mlx4_cq cq;
	struct mlx4_qp qp;
	struct mlx4_ah ah; /* the UD destination */
	__be32 *records; /* RQ doorbell, CQ set_ci, CQ arm */
	uint32_t device_cq; /* the device's CQE producer counter */
	uint32_t device_sq; /* the next send WQE the device completes */
	uint32_t device_rq; /* the next receive WQE the device completes */
	uint32_t cq_entries;
	struct ibv_sge sge;
	struct ibv_send_wr wr[64];
	struct ibv_recv_wr recv_wr;
	struct ibv_wc wc[64];
	uint8_t inline_data[256] __attribute__((aligned(64)));
};

static void *zalloc_aligned(size_t size)
{
	void *p = NULL;

	if (posix_memalign(&p, RIG_PAGE, size))
		return NULL;
	memset(p, 0, size);
	return p;
}

void tilde_c_rig_free(struct tilde_c_rig *rig);

/*
 * One RC or UD QP (send queue of 1 << log_sq WQEs of 1 << sq_shift bytes, receive queue
 * of 1 << log_rq 16-byte WQEs) on one CQ of 1 << log_cq 32-byte CQEs; BlueFlame buffers
 * of bf_buf_size bytes (0: none).
 */
struct tilde_c_rig *tilde_c_rig_new(unsigned log_sq, unsigned sq_shift, unsigned log_rq,
				    unsigned log_cq, int max_inline, int ud, unsigned bf_buf_size);
struct tilde_c_rig *tilde_c_rig_new(unsigned log_sq, unsigned sq_shift, unsigned log_rq,
				    unsigned log_cq, int max_inline, int ud, unsigned bf_buf_size)
{
	struct tilde_c_rig *rig = zalloc_aligned(sizeof(*rig));
	struct mlx4_context *ctx;
	struct mlx4_cq *cq;
	struct mlx4_qp *qp;
	size_t sq_bytes = (size_t)1 << (log_sq + sq_shift);
	size_t rq_bytes = (size_t)1 << (log_rq + 4);
	uint32_t i;

	if (!rig)
		return NULL;
	ctx = &rig->ctx;
	cq = &rig->cq;
	qp = &rig->qp;

	/* The context: a UAR page, a BlueFlame page, the QP table (mlx4_init_context). */
	ctx->uar = zalloc_aligned(RIG_PAGE);
	ctx->bf_page = zalloc_aligned(RIG_PAGE);
	ctx->bf_buf_size = bf_buf_size;
	ctx->bf_offset = 0;
	ctx->num_qps = 1 << 17;
	ctx->qp_table_shift = ffs(ctx->num_qps) - 1 - MLX4_QP_TABLE_BITS;
	ctx->qp_table_mask = (1 << ctx->qp_table_shift) - 1;
	ctx->cqe_size = 32;
	pthread_mutex_init(&ctx->qp_table_mutex, NULL);
	pthread_spin_init(&ctx->bf_lock, PTHREAD_PROCESS_PRIVATE);
	rig->records = zalloc_aligned(RIG_PAGE);

	/* The CQ (mlx4_create_cq): every entry the device's until it writes it. */
	rig->cq_entries = 1u << log_cq;
	cq->verbs_cq.cq.context = &ctx->ibv_ctx.context;
	cq->verbs_cq.cq.cqe = rig->cq_entries - 1;
	cq->buf.length = (size_t)rig->cq_entries * 32;
	cq->buf.buf = zalloc_aligned(cq->buf.length);
	cq->cqe_size = 32;
	cq->cqn = RIG_CQN;
	cq->arm_sn = 1;
	cq->set_ci_db = rig->records + 1;
	cq->arm_db = rig->records + 2;
	pthread_spin_init(&cq->lock, PTHREAD_PROCESS_PRIVATE);

	/* The QP (mlx4_create_qp, mlx4_alloc_qp_buf): send queue first in its buffer. */
	qp->verbs_qp.qp.context = &ctx->ibv_ctx.context;
	qp->verbs_qp.qp.qp_type = ud ? IBV_QPT_UD : IBV_QPT_RC;
	qp->verbs_qp.qp.qp_num = RIG_QPN;
	qp->verbs_qp.qp.send_cq = &cq->verbs_cq.cq;
	qp->verbs_qp.qp.recv_cq = &cq->verbs_cq.cq;
	qp->verbs_qp.qp.state = IBV_QPS_RTS;
	qp->buf_size = sq_bytes + rq_bytes;
	qp->buf.length = qp->buf_size;
	qp->buf.buf = zalloc_aligned(qp->buf_size);
	qp->max_inline_data = max_inline;
	qp->doorbell_qpn = htobe32(RIG_QPN << 8);
	qp->sq_signal_bits = 0;
	qp->sq.wqe_cnt = 1 << log_sq;
	qp->sq.wqe_shift = sq_shift;
	qp->sq.offset = 0;
	qp->sq_spare_wqes = (2048 >> sq_shift) + 1;
	qp->sq.max_post = qp->sq.wqe_cnt - qp->sq_spare_wqes;
	qp->sq.max_gs = 2;
	qp->sq.wrid = calloc(qp->sq.wqe_cnt, sizeof(uint64_t));
	qp->rq.wqe_cnt = 1 << log_rq;
	qp->rq.wqe_shift = 4;
	qp->rq.offset = sq_bytes;
	qp->rq.max_post = qp->rq.wqe_cnt;
	qp->rq.max_gs = 1;
	qp->rq.wrid = calloc(qp->rq.wqe_cnt, sizeof(uint64_t));
	qp->db = rig->records;
	pthread_spin_init(&qp->sq.lock, PTHREAD_PROCESS_PRIVATE);
	pthread_spin_init(&qp->rq.lock, PTHREAD_PROCESS_PRIVATE);

	/* The address handle (mlx4_create_ah): port 1, a LID, no GRH. */
	rig->ah.av.port_pd = htobe32(1 << 24 | 0x3);
	rig->ah.av.dlid = htobe16(0x12);
	rig->ah.av.g_slid = 0x1;
	rig->ah.av.stat_rate = 0;
	rig->ah.av.sl_tclass_flowlabel = htobe32(0);

	if (!ctx->uar || !ctx->bf_page || !rig->records || !cq->buf.buf || !qp->buf.buf || !qp->sq.wrid ||
	    !qp->rq.wrid) {
		tilde_c_rig_free(rig);
		return NULL;
	}
	for (i = 0; i < rig->cq_entries; i++)
		((struct mlx4_cqe *)cq->buf.buf)[i].owner_sr_opcode = MLX4_CQE_OWNER_MASK;
	mlx4_init_qp_indices(qp);
	mlx4_qp_init_sq_ownership(qp);
	if (mlx4_store_qp(ctx, RIG_QPN, qp)) {
		tilde_c_rig_free(rig);
		return NULL;
	}
	return rig;
}

void tilde_c_rig_free(struct tilde_c_rig *rig)
{
	if (!rig)
		return;
	if (rig->ctx.qp_table[0].table)
		mlx4_clear_qp(&rig->ctx, RIG_QPN);
	free(rig->qp.sq.wrid);
	free(rig->qp.rq.wrid);
	free(rig->qp.buf.buf);
	free(rig->cq.buf.buf);
	free(rig->records);
	free(rig->ctx.uar);
	free(rig->ctx.bf_page);
	free(rig);
}

/*
 * Fills the rig's WR array with `n` chained SEND or RDMA WRITE WRs of one `len`-byte
 * gather entry (or `len` bytes of inline data), all signaled, and returns the first.
 */
static struct ibv_send_wr *rig_wrs(struct tilde_c_rig *rig, int n, enum ibv_wr_opcode op,
				   uint32_t len, int inline_data)
{
	int i;

	if (inline_data && len > sizeof(rig->inline_data))
		return NULL;
	/* Inline data is copied from the address: it must be the rig's buffer. */
	rig->sge.addr = inline_data ? (uintptr_t)rig->inline_data : 0x10000;
	rig->sge.length = len;
	rig->sge.lkey = 0x1100;
	for (i = 0; i < n; i++) {
		struct ibv_send_wr *wr = &rig->wr[i];

		memset(wr, 0, sizeof(*wr));
		wr->wr_id = i;
		wr->next = i + 1 < n ? &rig->wr[i + 1] : NULL;
		wr->sg_list = &rig->sge;
		wr->num_sge = 1;
		wr->opcode = op;
		wr->send_flags = IBV_SEND_SIGNALED | (inline_data ? IBV_SEND_INLINE : 0);
		if (rig->qp.verbs_qp.qp.qp_type == IBV_QPT_UD) {
			wr->wr.ud.ah = &rig->ah.ibv_ah;
			wr->wr.ud.remote_qpn = 0x49;
			wr->wr.ud.remote_qkey = 0x11111111;
		} else {
			wr->wr.rdma.remote_addr = 0x20000;
			wr->wr.rdma.rkey = 0x2200;
		}
	}
	return &rig->wr[0];
}

/* `calls` post calls of one WR each; 0, or the provider's error. */
int tilde_c_post_single(struct tilde_c_rig *rig, int calls, int rdma_write, uint32_t len,
			int inline_data);
int tilde_c_post_single(struct tilde_c_rig *rig, int calls, int rdma_write, uint32_t len,
			int inline_data)
{
	struct ibv_send_wr *wr =
		rig_wrs(rig, 1, rdma_write ? IBV_WR_RDMA_WRITE : IBV_WR_SEND, len, inline_data);
	struct ibv_send_wr *bad;
	int i, ret;

	if (!wr)
		return EINVAL;
	for (i = 0; i < calls; i++) {
		ret = mlx4_post_send(&rig->qp.verbs_qp.qp, wr, &bad);
		if (ret)
			return ret;
	}
	return 0;
}

/* `calls` post calls of a chain of `chain` SENDs each; 0, or the provider's error. */
int tilde_c_post_chain(struct tilde_c_rig *rig, int calls, int chain, uint32_t len);
int tilde_c_post_chain(struct tilde_c_rig *rig, int calls, int chain, uint32_t len)
{
	struct ibv_send_wr *wr;
	struct ibv_send_wr *bad;
	int i, ret;

	if (chain > (int)(sizeof(rig->wr) / sizeof(rig->wr[0])))
		return EINVAL;
	wr = rig_wrs(rig, chain, IBV_WR_SEND, len, 0);
	for (i = 0; i < calls; i++) {
		ret = mlx4_post_send(&rig->qp.verbs_qp.qp, wr, &bad);
		if (ret)
			return ret;
	}
	return 0;
}

/* `calls` post calls of one receive WR of one `len`-byte scatter entry; 0, or the error. */
int tilde_c_post_recv(struct tilde_c_rig *rig, int calls, uint32_t len);
int tilde_c_post_recv(struct tilde_c_rig *rig, int calls, uint32_t len)
{
	struct ibv_recv_wr *bad;
	int i, ret;

	rig->sge.addr = 0x10000;
	rig->sge.length = len;
	rig->sge.lkey = 0x1100;
	memset(&rig->recv_wr, 0, sizeof(rig->recv_wr));
	rig->recv_wr.wr_id = 7;
	rig->recv_wr.sg_list = &rig->sge;
	rig->recv_wr.num_sge = 1;
	for (i = 0; i < calls; i++) {
		ret = mlx4_post_recv(&rig->qp.verbs_qp.qp, &rig->recv_wr, &bad);
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * The device: a send CQE for every send WQE posted since the last call, then a receive
 * CQE (a 64-byte SEND arrived) for every receive WQE, each written as the device writes
 * it (body, then the owner byte of the lap).
 */
void tilde_c_device_complete(struct tilde_c_rig *rig);
void tilde_c_device_complete(struct tilde_c_rig *rig)
{
	struct mlx4_cqe *ring = rig->cq.buf.buf;

	while (rig->device_rq != rig->qp.rq.head) {
		struct mlx4_cqe *cqe = &ring[rig->device_cq & (rig->cq_entries - 1)];
		uint8_t owner = rig->device_cq & rig->cq_entries ? MLX4_CQE_OWNER_MASK : 0;

		cqe->vlan_my_qpn = htobe32(RIG_QPN);
		cqe->immed_rss_invalid = 0;
		cqe->g_mlpath_rqpn = htobe32(0x49);
		cqe->status = 0;
		cqe->byte_cnt = htobe32(64);
		cqe->wqe_index = htobe16(rig->device_rq & 0xffff);
		udma_to_device_barrier();
		cqe->owner_sr_opcode = owner | MLX4_RECV_OPCODE_SEND;
		rig->device_rq++;
		rig->device_cq++;
	}

	while (rig->device_sq != rig->qp.sq.head) {
		struct mlx4_cqe *cqe = &ring[rig->device_cq & (rig->cq_entries - 1)];
		uint8_t owner = rig->device_cq & rig->cq_entries ? MLX4_CQE_OWNER_MASK : 0;

		cqe->vlan_my_qpn = htobe32(RIG_QPN);
		cqe->immed_rss_invalid = 0;
		cqe->g_mlpath_rqpn = 0;
		cqe->status = 0;
		cqe->byte_cnt = 0;
		cqe->wqe_index = htobe16(rig->device_sq & 0xffff);
		udma_to_device_barrier();
		cqe->owner_sr_opcode = owner | MLX4_CQE_IS_SEND_MASK | MLX4_OPCODE_SEND;
		rig->device_sq++;
		rig->device_cq++;
	}
}

/* Polls up to `batch` completions per call until `total` came back; the count, or -1. */
int tilde_c_poll(struct tilde_c_rig *rig, int batch, int total);
int tilde_c_poll(struct tilde_c_rig *rig, int batch, int total)
{
	int got = 0;

	if (batch > (int)(sizeof(rig->wc) / sizeof(rig->wc[0])))
		return -1;
	while (got < total) {
		int n = mlx4_poll_cq(&rig->cq.verbs_cq.cq, batch, rig->wc);

		if (n <= 0)
			return n < 0 ? -1 : got;
		if (rig->wc[0].status != IBV_WC_SUCCESS)
			return -1;
		got += n;
	}
	return got;
}

/* The send doorbell the device saw last (for the harness's own check). */
uint32_t tilde_c_send_doorbell(const struct tilde_c_rig *rig);
uint32_t tilde_c_send_doorbell(const struct tilde_c_rig *rig)
{
	return be32toh(*(volatile const __be32 *)((const char *)rig->ctx.uar + MLX4_SEND_DOORBELL));
}
