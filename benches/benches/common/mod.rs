//! What both benchmark binaries share (criterion is a dev-dependency, so the library
//! cannot hold it).

use std::time::Duration;

use criterion::Criterion;

/// Short warm-up and measurement, enough samples for stable medians on 2 cores.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(30)
}
