//! The fast path: `post_send`, `post_recv`, `poll_cq`, `req_notify_cq`, and EQ polling.
//!
//! This is the code that must be the same on every kernel: it depends on nothing but
//! [`platform::Platform`], allocates nothing, takes no locks (the poster and the completer
//! of a queue share only atomic counters and the wr_id slots), and has no `cfg`. Its only
//! `unsafe` is taking ring entries whose ownership the queue protocol has given it.

pub mod cq;
pub mod eq;
pub mod platform;
pub mod qp;
pub mod recv;
pub mod send;
pub mod wr;
